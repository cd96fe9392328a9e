#!/usr/bin/env bash
# Everything to run on the GPU machine in one call: unpack the carried Debian packages (no apt there), build with
# the CUDA backend for sm_90a, run every test (GPU suites included), compute-sanitizer on the GPU suites, the
# benchmarks, and print a short table. Logs go to build-device/out and, packed in one file, to $OUT.
#
#   here:  scripts/fetch-device-deps.sh && scripts/fetch-cutlass.sh
#   there: scripts/device-check.sh             (device call with carry [".deps/debs", ".deps/wheels"])
#
# Or with binaries built here, no build there (saves the ~200 s a fresh machine's build takes of the device time):
#   here:  scripts/pack-prebuilt.sh            (a CUDA Release build in build-cuda)
#   there: PREBUILT=1 scripts/device-check.sh  (carry [".deps/rundebs", ".deps/prebuilt"])
# Without their build tree the tests run as 8 shards of elephant_tests instead of ctest; GPU_FILTER is then a
# GoogleTest filter (default *Cuda*).
#
# STAGES picks what runs (default: "tests memcheck bench"):
#   tests    ctest, every suite (the GPU suites run; nothing may be skipped there)
#   gpu      only the GPU suites (ctest -R Cuda, or GPU_FILTER): the quick check after a CUDA change
#   memcheck compute-sanitizer memcheck over the GPU suites (elephant_tests --gtest_filter=*Cuda*, or MEMCHECK_FILTER)
#   bench    bench_cuda_moe's MoE layer rows (BENCH_FILTER: another benchmark filter) next to
#            tools/bench/moe_layer_torch.py (torch._grouped_mm)
#   table3   the paper-shaped model (made once, ~10.6 GB in build-device/paper_model): bench_translate (engine, and
#            again without one feature, TABLE3_ABLATION: no-pdl (default), no-pipeline, no-graphs or none) next to
#            tools/bench/hf_generate_bench.py (transformers fp16 generate)
#   quant    bench_cuda_moe's quantized rows: the paper's Table 1 (ExpertGemm: 40 tokens over 1-32 experts, fp16 /
#            int8 / int4 wi GEMM; ExpertGemmCutlass: the int4 candidate on CUTLASS's mixed-input grouped GEMM) and the
#            MoE layer with int8 / int4 experts next to fp16
#   table3q  Table 3 with quantized experts: bench_translate fp16, --quantize int8, --quantize int4, and int4 with
#            --quantize-non-experts (next to the transformers numbers when table3 ran in the same call)
#   cpu      bench_cpu
#   decode   bench_cuda_decode: the ops of one decode step, timed one by one (DECODE_FILTER: a benchmark filter;
#            unfiltered it ran past 400 s on the H100, ~14 s a row: filter it, e.g. DECODE_FILTER='/8/')
#   ab       one bench_cuda_moe filter (AB_FILTER) under each value of an environment switch (AB_VAR, AB_VALUES;
#            "unset" runs without it), medians side by side: an A/B in one build
#   translate bench_translate alone on the paper-shaped model (TRANSLATE_FLAGS; default batch 1 and 8 greedy), with
#            the graph captures and their host time per batch, then again with --steps-only (the decode step alone)
#   versus   bench_translate of this build against a second pack's (VERSUS, e.g. prebuilt-main from
#            `scripts/pack-prebuilt.sh build-dir prebuilt-main`, carried too): VERSUS_ROUNDS (default 2) rounds of
#            A then B, VERSUS_FLAGS (default --batch-sizes 1,8,96 --beams 1,2 --batches 5); medians side by side
#   profile  Nsight Systems over bench_translate (PROFILE_BATCH, PROFILE_BEAM; default 1, 1; PROFILE_FLAGS: more
#            flags, e.g. "--quantize int4 --quantize-non-experts"): API calls, kernels. The H100 machine of
#            2026-11-26 had no nsys (the stage then says so): use the trace stage (CUPTI) and ncu (kernels)
#   stepprofile Nsight Compute over one decode step replayed from its graph (bench_translate --steps-only
#            --profile-step, STEP_PROFILE_BATCH, default 8; STEP_PROFILE_FLAGS: more flags): each kernel's duration,
#            one at a time (no PDL overlap), in launch order (step_profile.csv) and summed by kernel;
#            STEP_PROFILE_FLAGS='--profile-search --beams 2 --new-tokens 8' brackets a whole search instead (the
#            search's own kernels next to its steps')
#   trace    a CUPTI timeline (bench/cupti_trace.cc, injected) of one whole search per batch and beam size
#            (bench_translate --steps-only --profile-search; TRACE_FLAGS, default --batch-sizes 8 --beams 1,2):
#            GPU busy against wall time, the idle gaps and the runtime calls inside them (tools/bench/trace_gaps.py)
#   kernels  Nsight Compute over the grouped GEMM of one bench_cuda_moe row (NCU_FILTER, default ExpertGemm/int4/32):
#            sections, scheduler and warp-stall statistics (ncu.txt), and the SASS with its stall samples (ncu_sass.csv).
#            NCU_KERNELS (a kernel-name regex, default grouped_gemm) and NCU_LAUNCHES (default 2) widen it, e.g. every
#            kernel of one MoE layer: NCU_FILTER=MoeLayer/fp16/1/ NCU_LAUNCHES=6
#            NCU_KERNELS='route|sort|offsets|gather|grouped_gemm|add_rows|group_arrays|device_kernel|Radix'
#            (durations per kernel; ncu runs them one at a time, without PDL's overlap)
set -uo pipefail
cd "$(dirname "$0")/.."
stages=" ${STAGES:-tests memcheck bench} "
logs=build-device/out
rm -rf "$logs"
mkdir -p "$logs"
root=$PWD/.deps/root
arch=$(gcc -dumpmachine)
prebuilt=${PREBUILT:-0}
debs=.deps/debs
[ "$prebuilt" = 1 ] && debs=.deps/rundebs  # the shared libraries the binaries need, nothing to build with
if [ -d "$debs" ]; then
  mkdir -p "$root"
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$root"; done
fi
if [ "$prebuilt" != 1 ]; then
  scripts/fetch-cutlass.sh >/dev/null || { echo "no CUTLASS headers (carry .deps/wheels)"; exit 1; }
fi
export PKG_CONFIG_SYSROOT_DIR=$root
export PKG_CONFIG_PATH=$root/usr/lib/$arch/pkgconfig:$root/usr/share/pkgconfig
export LD_LIBRARY_PATH=$root/usr/lib/$arch:$root/usr/lib/$arch/openblas-openmp:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH

# ctest with 8 test processes at once: each gets 2 CPU threads, and idle OpenMP threads sleep instead of spinning.
# Unbounded, the demo-model tests' CPU references (all cores each, spinning) ran 14x slower than alone (314 s
# against 22 s under compute-sanitizer, serially).
ctest_parallel() {
  OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ctest "$@"
}

# elephant_tests as 8 shards at once, 2 CPU threads each (the prebuilt binaries have no ctest tree): filter, log.
gtest_parallel() {
  local filter=$1 log=$2 pids=() shard rc=0
  for shard in 0 1 2 3 4 5 6 7; do
    GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$shard OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE \
      build-device/bin/elephant_tests --gtest_filter="$filter" >"$log.$shard" 2>&1 &
    pids+=($!)
  done
  for shard in 0 1 2 3 4 5 6 7; do
    wait "${pids[$shard]}" && continue
    echo "!! shard $shard exited with status $?" >>"$log.$shard"
    rc=1
  done
  cat "$log".[0-7] >"$log"
  rm -f "$log".[0-7]
  return $rc
}

# What the shards of gtest_parallel's log passed, failed and skipped.
gtest_summary() {
  grep '^!! shard' "$1"
  awk '/^\[  PASSED  \] [0-9]+ test/ { passed += $4 }
       /^\[  FAILED  \] [A-Za-z]/ && !/listed below/ { failed[$4] = 1 }
       /^\[  SKIPPED \] [A-Za-z]/ { skipped[$4] = 1 }
       END { printf "%d tests passed, %d failed, %d skipped\n", passed, length(failed), length(skipped)
             for (t in failed) print "  FAILED " t
             for (t in skipped) print "  SKIPPED " t }' "$1" | head -30
}

pack() {
  if [ -n "${OUT:-}" ]; then tar -czf "$OUT/device-check.tgz" -C "$logs" .; fi
}
trap pack EXIT

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no GPU"; } | tee "$logs/gpu.txt"
# The host's CPU too: transformers' Table 3 baseline is bound by it.
{ echo "host CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) threads"; } | tee -a "$logs/gpu.txt"
start=$(date +%s)
if [ "$prebuilt" = 1 ]; then
  [ -f .deps/prebuilt/bin.tar.xz ] ||
    { echo "PREBUILT=1 needs .deps/prebuilt (scripts/pack-prebuilt.sh; carry .deps/prebuilt and .deps/rundebs)"; exit 1; }
  tee "$logs/prebuilt.txt" <.deps/prebuilt/stamp
  packed=$(sed -n 's/^build_dir=//p' .deps/prebuilt/stamp)
  source_dir=$(sed -n 's/^source_dir=//p' .deps/prebuilt/stamp)
  # The tests find the goldens and the CLI at the paths compiled in where they were built.
  if [ "$(readlink -f "$source_dir")" != "$(readlink -f "$PWD")" ]; then
    [ -L "$source_dir" ] && rm "$source_dir"  # an earlier call's link
    [ -e "$source_dir" ] && { echo "PREBUILT=1: $source_dir exists here and is not this checkout"; exit 1; }
    mkdir -p "$(dirname "$source_dir")" && ln -s "$PWD" "$source_dir"
  fi
  [ "$packed" != build-device ] || { echo "PREBUILT=1: pack from another directory than build-device"; exit 1; }
  rm -rf "${packed:?}/bin" build-device/bin
  mkdir -p "$packed" build-device
  tar -C "$packed" -xJf .deps/prebuilt/bin.tar.xz
  ln -s "$PWD/$packed/bin" build-device/bin
  echo "== prebuilt binaries unpacked in $(($(date +%s) - start)) s"
else
  [ -L build-device/bin ] && rm build-device/bin  # a prebuilt call's link
  cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DELEPHANT_CUDA=ON -DELEPHANT_DEPS_ROOT="$root" \
    -DCMAKE_PREFIX_PATH="$root/usr" -DCMAKE_CUDA_ARCHITECTURES="90a-real;80-virtual" >"$logs/configure.log" 2>&1 ||
    { tail -30 "$logs/configure.log"; exit 1; }
  cmake --build build-device -j "${JOBS:-$(nproc)}" >"$logs/build.log" 2>&1 ||
    { grep -E "error|Error" "$logs/build.log" | head -30; exit 1; }
  echo "== built in $(($(date +%s) - start)) s"
fi
status=0

if [[ $stages == *" tests "* && $prebuilt = 1 ]]; then
  gtest_parallel '*' "$logs/gtest.log" || status=1
  echo "== tests (8 shards of elephant_tests)"
  gtest_summary "$logs/gtest.log"
  # Nothing may be skipped on the GPU machine.
  grep -q '^\[  SKIPPED \] [A-Za-z]' "$logs/gtest.log" && { echo "!! skipped tests on the GPU machine"; status=1; }
elif [[ $stages == *" tests "* ]]; then
  (cd build-device && ctest_parallel -j 8 --output-on-failure >"../$logs/ctest.log" 2>&1) || status=1
  echo "== tests"
  grep -E "tests passed|tests failed|\*\*\*Failed|\*\*\*Exception|Not Run|Timeout" "$logs/ctest.log" | head -30
  # On the GPU machine nothing may be skipped: a skipped GPU suite would mean it never ran.
  # ctest prints a skipped test's status as "***Skipped" (test names may contain the word too).
  if grep -q '\*\*\*Skipped' "$logs/ctest.log"; then
    echo "!! skipped tests on the GPU machine:"
    grep '\*\*\*Skipped' "$logs/ctest.log" | head -10
    status=1
  fi
fi

if [[ $stages == *" gpu "* && $prebuilt = 1 ]]; then
  gtest_parallel "${GPU_FILTER:-*Cuda*}" "$logs/gtest_gpu.log" || status=1
  echo "== GPU suites (8 shards of elephant_tests)"
  gtest_summary "$logs/gtest_gpu.log"
elif [[ $stages == *" gpu "* ]]; then
  (cd build-device && ctest_parallel -j 8 -R "${GPU_FILTER:-Cuda}" --output-on-failure >"../$logs/ctest_gpu.log" 2>&1) || status=1
  echo "== GPU suites"
  grep -E "tests passed|tests failed|\*\*\*Failed|\*\*\*Exception|Skipped|Timeout" "$logs/ctest_gpu.log" | head -30
fi

if [[ $stages == *" memcheck "* ]]; then
  compute-sanitizer --tool memcheck --leak-check full --error-exitcode 99 build-device/bin/elephant_tests \
    --gtest_filter="${MEMCHECK_FILTER:-*Cuda*}" >"$logs/memcheck.log" 2>&1
  rc=$?
  echo "== compute-sanitizer memcheck, GPU suites: rc=$rc"
  grep -E "ERROR SUMMARY|LEAK SUMMARY|\[  PASSED  \]|\[  FAILED  \]|tests ran" "$logs/memcheck.log" | tail -6
  [ $rc = 0 ] || status=1
fi

if [[ $stages == *" bench "* ]]; then
  build-device/bin/bench_cuda_moe --benchmark_filter="${BENCH_FILTER:-MoeLayer/}" --benchmark_repetitions=5 \
    --benchmark_report_aggregates_only=true \
    --benchmark_format=console --benchmark_out="$logs/bench_cuda_moe.json" --benchmark_out_format=json \
    >"$logs/bench_cuda_moe.txt" 2>&1 || status=1
  python3 tools/bench/moe_layer_torch.py --json "$logs/moe_torch.json" >"$logs/moe_torch.txt" 2>&1 || status=1
  echo "== MoE layer, d_model 1024, d_ff 4096, 32 experts (engine: CUDA graph replay; medians, us per layer)"
  python3 - "$logs/bench_cuda_moe.json" "$logs/moe_torch.json" <<'PY' || status=1
import json, sys
engine = json.load(open(sys.argv[1]))["benchmarks"]
torch_rows = {r["tokens"]: r for r in json.load(open(sys.argv[2]))["rows"]}
print("| dtype | tokens | experts hit | HBM floor us | engine us | of floor | torch layer (graph) us | torch grouped_mm (graph) us | engine speedup vs torch layer |")
print("|---|---|---|---|---|---|---|---|---|")
for b in engine:
    if b.get("aggregate_name") != "median":
        continue
    dtype, tokens = b["run_name"].split("/")[1], int(b["run_name"].split("/")[2])
    t = torch_rows.get(tokens, {})
    us = b["real_time"]
    tl, tg = t.get("layer_graph_ms", float("nan")) * 1e3, t.get("grouped_mm_graph_ms", float("nan")) * 1e3
    print(f"| {dtype} | {tokens} | {b['experts_hit']:.0f} | {b['floor_us']:.1f} | {us:.1f} | {b['floor_us'] / us:.2f} | {tl:.1f} | {tg:.1f} | {tl / us:.2f}x |")
PY
fi

if [[ $stages == *" quant "* ]]; then
  build-device/bin/bench_cuda_moe --benchmark_filter='ExpertGemm/|MoeLayer/(fp16|int8|int4)/' \
    --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_format=json \
    --benchmark_out="$logs/bench_quant.json" --benchmark_out_format=json >/dev/null 2>"$logs/bench_quant.txt" ||
    status=1
  # The CUTLASS candidate in a run of its own: should it fail, the engine's rows above are already written.
  build-device/bin/bench_cuda_moe --benchmark_filter='ExpertGemmCutlass/' \
    --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_format=json \
    --benchmark_out="$logs/bench_quant_cutlass.json" --benchmark_out_format=json >/dev/null \
    2>"$logs/bench_quant_cutlass.txt" || { echo "ExpertGemmCutlass failed: $logs/bench_quant_cutlass.txt"; status=1; }
  echo "== quantized experts, fp16 activations (CUDA graph replay; medians, us per call)"
  python3 - "$logs/bench_quant.json" "$logs/bench_quant_cutlass.json" <<'PY' || status=1
import json, os, sys
rows = {}
for b in [b for path in sys.argv[1:] if os.path.exists(path) and os.path.getsize(path) > 0
          for b in json.load(open(path))["benchmarks"]]:
    if b.get("aggregate_name") == "median":
        kind, fmt, arg = b["run_name"].split("/")[:3]
        rows[(kind, fmt, int(arg))] = b
cell = lambda r: f"{r['real_time']:.1f} ({r['floor_us'] / r['real_time']:.2f})" if r else "-"
for kind, label in (("ExpertGemm", "active experts"), ("MoeLayer", "tokens")):
    args = sorted({a for k, _, a in rows if k == kind})
    print(f"| {kind}: {label} | fp16 us (of floor) | int8 us (of floor) | int8 speedup | int4 us (of floor) | int4 speedup |")
    print("|---|---|---|---|---|---|")
    for a in args:
        f, i8, i4 = (rows.get((kind, fmt, a)) for fmt in ("fp16", "int8", "int4"))
        speed = lambda r: f"{f['real_time'] / r['real_time']:.2f}x" if r and f else "-"
        print(f"| {a} | {cell(f)} | {cell(i8)} | {speed(i8)} | {cell(i4)} | {speed(i4)} |")
# The candidate int4 kernel (CUTLASS's mixed-input grouped GEMM) against the engine's fp16 and int4 Table 1 rows.
cutlass = {a: r for (k, _, a), r in rows.items() if k == "ExpertGemmCutlass"}
if cutlass:
    print("| active experts | CUTLASS int4 us (of floor) | speedup over engine fp16 | over engine int4 |")
    print("|---|---|---|---|")
    for a, r in sorted(cutlass.items()):
        f, i4 = rows.get(("ExpertGemm", "fp16", a)), rows.get(("ExpertGemm", "int4", a))
        ratio = lambda base: f"{base['real_time'] / r['real_time']:.2f}x" if base else "-"
        print(f"| {a} | {cell(r)} | {ratio(f)} | {ratio(i4)} |")
PY
fi

if [[ $stages == *" decode "* ]]; then
  build-device/bin/bench_cuda_decode --benchmark_filter="${DECODE_FILTER:-.}" --benchmark_repetitions=3 \
    --benchmark_report_aggregates_only=true \
    --benchmark_format=json --benchmark_out="$logs/bench_cuda_decode.json" --benchmark_out_format=json \
    >/dev/null 2>"$logs/bench_cuda_decode.txt" || status=1
  echo "== decode-step ops, paper shape, fp16 (CUDA graph replay over distinct weights; medians, us per call)"
  python3 - "$logs/bench_cuda_decode.json" <<'PY' || status=1
import json, sys
print("| op | rows | us | HBM floor us | of floor |")
print("|---|---|---|---|---|")
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    if b.get("aggregate_name") != "median":
        continue
    name, rows = b["run_name"].rsplit("/", 1)
    print(f"| {name} | {rows} | {b['real_time']:.1f} | {b['floor_us']:.2f} | {b['floor_us'] / b['real_time']:.2f} |")
PY
fi

if [[ $stages == *" table3 "* ]]; then
  model=build-device/paper_model
  [ -f "$model/config.json" ] || python3 tools/bench/make_paper_model.py --out "$model" >"$logs/paper_model.txt" 2>&1
  build-device/bin/bench_translate "$model" --device cuda --dtype fp16 --json "$logs/table3_engine.json" \
    >"$logs/table3_engine.txt" 2>&1 || status=1
  # The engine again without one of its decode features (TABLE3_ABLATION): what that feature brings.
  ablation=${TABLE3_ABLATION:-no-pdl}
  case $ablation in
    none) ablated=() ;;
    no-pdl) ablated=(env ELEPHANT_PDL=0 build-device/bin/bench_translate) ;;
    no-pipeline) ablated=(build-device/bin/bench_translate --no-pipeline) ;;
    no-graphs) ablated=(build-device/bin/bench_translate --no-cuda-graphs) ;;
    *) echo "unknown TABLE3_ABLATION $ablation" >&2; exit 2 ;;
  esac
  if [ ${#ablated[@]} -gt 0 ]; then
    "${ablated[@]}" "$model" --device cuda --dtype fp16 --json "$logs/table3_engine_ablated.json" \
      >"$logs/table3_engine_ablated.txt" 2>&1 || status=1
  else
    cp "$logs/table3_engine.json" "$logs/table3_engine_ablated.json"
  fi
  python3 tools/bench/hf_generate_bench.py "$model" --json "$logs/table3_hf.json" >"$logs/table3_hf.txt" 2>&1 ||
    status=1
  echo "== Table 3 (input tokens/s, 40 in / 40 out forced, fp16)"
  python3 - "$logs/table3_engine.json" "$logs/table3_engine_ablated.json" "$logs/table3_hf.json" "$ablation" \
    <<'PY' || status=1
import json, sys
graphs, ablated, hf = (json.load(open(p))["rows"] for p in sys.argv[1:4])
key = lambda r: (r["batch"], r.get("beam", r.get("beams")))
ablated, hf = {key(r): r for r in ablated}, {key(r): r for r in hf}
print(f"| batch | beam | transformers | elephant | ratio | elephant {sys.argv[4]} | peak GPU GiB |")
print("|---|---|---|---|---|---|---|")
for r in graphs:
    t = hf[key(r)]["input_tokens_per_s"]
    e = r["input_tokens_per_s"]
    print(f"| {r['batch']} | {key(r)[1]} | {t:,.1f} | {e:,.0f} | {e / t:.1f}x | "
          f"{ablated[key(r)]['input_tokens_per_s']:,.0f} | {r['peak_gpu_bytes'] / 2**30:.2f} |")
PY
fi

if [[ $stages == *" table3q "* ]]; then
  model=build-device/paper_model
  [ -f "$model/config.json" ] || python3 tools/bench/make_paper_model.py --out "$model" >"$logs/paper_model.txt" 2>&1
  # fp16 experts: table3's engine run when it ran in this call, else one of its own.
  [ -f "$logs/table3_engine.json" ] && cp "$logs/table3_engine.json" "$logs/table3q_none.json"
  # int4ne: int4 experts and the attention / dense FFN weights in int8 (--quantize-non-experts).
  for q in none int8 int4 int4ne; do
    [ -f "$logs/table3q_$q.json" ] && continue
    case $q in
      int4ne) flags=(--quantize int4 --quantize-non-experts) ;;
      *) flags=(--quantize "$q") ;;
    esac
    build-device/bin/bench_translate "$model" --device cuda --dtype fp16 "${flags[@]}" \
      --json "$logs/table3q_$q.json" >"$logs/table3q_$q.txt" 2>&1 || status=1
  done
  echo "== Table 3, fp16 activations, experts fp16 / int8 / int4, and int4 with int8 non-experts (input tokens/s;"
  echo "   ratio to transformers fp16)"
  python3 - "$logs" <<'PY' || status=1
import json, os, sys
logs = sys.argv[1]
key = lambda r: (r["batch"], r.get("beam", r.get("beams")))
runs = {q: {key(r): r for r in json.load(open(f"{logs}/table3q_{q}.json"))["rows"]}
        for q in ("none", "int8", "int4", "int4ne")}
hf_path = f"{logs}/table3_hf.json"
hf = {key(r): r["input_tokens_per_s"] for r in json.load(open(hf_path))["rows"]} if os.path.exists(hf_path) else {}
print("| batch | beam | transformers | fp16 | int8 | int4 | int4 + int8 non-experts | int8 / fp16 | int4 / fp16 | "
      "int4ne / fp16 | peak GiB fp16 / int8 / int4 / int4ne |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for k in runs["none"]:
    t = {q: runs[q][k]["input_tokens_per_s"] for q in runs}
    ratio = lambda q: f" ({t[q] / hf[k]:.1f}x)" if k in hf else ""
    peak = " / ".join(f"{runs[q][k]['peak_gpu_bytes'] / 2**30:.2f}" for q in runs)
    print(f"| {k[0]} | {k[1]} | {hf.get(k, float('nan')):,.1f} | {t['none']:,.0f}{ratio('none')} | "
          f"{t['int8']:,.0f}{ratio('int8')} | {t['int4']:,.0f}{ratio('int4')} | {t['int4ne']:,.0f}{ratio('int4ne')} | "
          f"{t['int8'] / t['none']:.2f} | {t['int4'] / t['none']:.2f} | {t['int4ne'] / t['none']:.2f} | {peak} |")
PY
fi

if [[ $stages == *" ab "* ]]; then
  # One build, one benchmark filter, several values of one environment switch side by side (an A/B of a change kept
  # behind a variable until it is decided): AB_VAR, AB_VALUES ("unset" runs without it), AB_FILTER (bench_cuda_moe).
  : "${AB_VAR:?ab needs AB_VAR}"
  values=${AB_VALUES:-unset 1}
  for v in $values; do
    if [ "$v" = unset ]; then run=(env -u "$AB_VAR"); else run=(env "$AB_VAR=$v"); fi
    "${run[@]}" build-device/bin/bench_cuda_moe --benchmark_filter="${AB_FILTER:-ExpertGemm/(fp16|int8|int4)/32/}" \
      --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_format=json \
      --benchmark_out="$logs/ab_$v.json" --benchmark_out_format=json >/dev/null 2>"$logs/ab_$v.txt" || status=1
  done
  echo "== A/B of $AB_VAR (bench_cuda_moe medians, us)"
  python3 - "$logs" $values <<'PY' || status=1
import json, sys
logs, values = sys.argv[1], sys.argv[2:]
runs = {}
for v in values:
    for b in json.load(open(f"{logs}/ab_{v}.json"))["benchmarks"]:
        if b.get("aggregate_name") == "median":
            runs.setdefault(b["run_name"].split("/min_time")[0], {})[v] = b["real_time"]
print("| benchmark | " + " | ".join(values) + " |")
print("|---|" + "---|" * len(values))
for name, times in runs.items():
    print(f"| {name} | " + " | ".join(f"{times[v]:.1f}" if v in times else "-" for v in values) + " |")
PY
fi

if [[ $stages == *" translate "* ]]; then
  # The engine alone on the paper-shaped model (no transformers run): TRANSLATE_FLAGS for bench_translate.
  model=build-device/paper_model
  [ -f "$model/config.json" ] || python3 tools/bench/make_paper_model.py --out "$model" >"$logs/paper_model.txt" 2>&1
  echo "== bench_translate ${TRANSLATE_FLAGS:---batch-sizes 1,8 --beams 1 --batches 5} (engine only)"
  # shellcheck disable=SC2086
  build-device/bin/bench_translate "$model" --device cuda --dtype fp16 \
    ${TRANSLATE_FLAGS:---batch-sizes 1,8 --beams 1 --batches 5} 2>&1 | tee "$logs/translate.txt" | grep '^|' ||
    status=1
  # The step alone (queued back to back, no search): the difference to the per-step time above is the search's.
  # shellcheck disable=SC2086
  build-device/bin/bench_translate "$model" --device cuda --dtype fp16 \
    ${TRANSLATE_FLAGS:---batch-sizes 1,8 --beams 1 --batches 5} --steps-only 2>&1 | tee "$logs/translate_steps.txt" |
    grep '^|' || status=1
fi

if [[ $stages == *" versus "* ]]; then
  # Two builds on the same machine and inputs, alternated so that a drift of the machine touches both: the A/B of a
  # branch against main in one call.
  : "${VERSUS:?versus needs VERSUS, a second pack under .deps}"
  model=build-device/paper_model
  [ -f "$model/config.json" ] || python3 tools/bench/make_paper_model.py --out "$model" >"$logs/paper_model.txt" 2>&1
  rm -rf build-versus && mkdir -p build-versus && tar -C build-versus -xJf ".deps/$VERSUS/bin.tar.xz"
  tee "$logs/versus_stamp.txt" <".deps/$VERSUS/stamp" | grep commit=
  for round in $(seq "${VERSUS_ROUNDS:-2}"); do
    for side in this versus; do
      bin=build-device/bin
      [ $side = versus ] && bin=build-versus/bin
      # shellcheck disable=SC2086
      "$bin/bench_translate" "$model" --device cuda --dtype fp16 \
        ${VERSUS_FLAGS:---batch-sizes 1,8,96 --beams 1,2 --batches 5} --json "$logs/versus_${side}_$round.json" >"$logs/versus_${side}_$round.txt" 2>&1 || status=1
    done
  done
  if [[ " ${VERSUS_FLAGS:-} " == *" --steps-only "* ]]; then  # no JSON: each round's tables
    for f in "$logs"/versus_{this,versus}_*.txt; do echo "-- $(basename "$f" .txt)" && grep '^|' "$f"; done
  else
    echo "== this build against $VERSUS (median ms a batch, each round; ratio of the medians over the rounds)"
    python3 - "$logs" "${VERSUS_ROUNDS:-2}" <<'PY' || status=1
import json, statistics, sys
logs, rounds = sys.argv[1], int(sys.argv[2])
key = lambda r: (r["batch"], r["beam"])
runs = {side: [{key(r): r["median_batch_s"] * 1e3 for r in json.load(open(f"{logs}/versus_{side}_{i}.json"))["rows"]}
               for i in range(1, rounds + 1)] for side in ("this", "versus")}
print("| batch | beam | this ms | versus ms | versus / this |")
print("|---|---|---|---|---|")
for k in runs["this"][0]:
    this, other = ([run[k] for run in runs[side]] for side in ("this", "versus"))
    ratio = statistics.median(other) / statistics.median(this)
    print(f"| {k[0]} | {k[1]} | {' / '.join(f'{t:.2f}' for t in this)} | {' / '.join(f'{t:.2f}' for t in other)} | "
          f"{ratio:.3f} |")
PY
  fi
fi

if [[ $stages == *" profile "* ]]; then
  # Where a batch-1 translation's time goes (Nsight Systems): CUDA API calls and kernels, summed.
  model=build-device/paper_model
  [ -f "$model/config.json" ] || python3 tools/bench/make_paper_model.py --out "$model" >"$logs/paper_model.txt" 2>&1
  nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$nsys" ]; then
    "$nsys" profile -o "$logs/profile" --force-overwrite true build-device/bin/bench_translate "$model" \
      --batch-sizes "${PROFILE_BATCH:-1}" --beams "${PROFILE_BEAM:-1}" --batches 3 ${PROFILE_FLAGS:-} \
      >"$logs/profile_run.txt" 2>&1
    "$nsys" stats --report cuda_api_sum,cuda_gpu_kern_sum --format csv --output "$logs/profile" "$logs/profile.nsys-rep" \
      >/dev/null 2>&1
    echo "== profile: batch ${PROFILE_BATCH:-1}, beam ${PROFILE_BEAM:-1} (top CUDA API calls, top kernels; total ns)"
    for f in "$logs"/profile_cuda_api_sum.csv "$logs"/profile_cuda_gpu_kern_sum.csv; do
      [ -f "$f" ] && python3 -c "
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows[:12]: print(f\"{int(float(r['Total Time (ns)'])):>12} {r['Num Calls'] if 'Num Calls' in r else r['Instances']:>7}  {r['Name'][:90]}\")
" "$f"
    done
    rm -f "$logs/profile.nsys-rep" "$logs/profile.sqlite"
  else
    echo "== profile: no nsys on this machine"
  fi
fi

if [[ $stages == *" stepprofile "* ]]; then
  # Where a decode step's time goes, kernel by kernel: one replayed step, the only work inside the profiler's bracket.
  model=build-device/paper_model
  [ -f "$model/config.json" ] || python3 tools/bench/make_paper_model.py --out "$model" >"$logs/paper_model.txt" 2>&1
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -n "$ncu" ]; then
    # Caches and clocks as the step leaves them: ncu's defaults flush the caches and lock the base clock before each
    # kernel, which a replayed step's small kernels, reading what the kernel before them wrote, never see.
    # shellcheck disable=SC2086
    "$ncu" --profile-from-start off --cache-control none --clock-control none --metrics gpu__time_duration.sum \
      --csv --page raw \
      build-device/bin/bench_translate "$model" --device cuda --dtype fp16 --steps-only --profile-step \
      --batch-sizes "${STEP_PROFILE_BATCH:-8}" ${STEP_PROFILE_FLAGS:-} >"$logs/step_profile.csv" \
      2>"$logs/step_profile.txt" || status=1
    echo "== one decode step at batch ${STEP_PROFILE_BATCH:-8}, kernel by kernel (Nsight Compute, serialized: no PDL"
    echo "   overlap; durations in us, summed by kernel; each launch in order in step_profile.csv)"
    python3 - "$logs/step_profile.csv" <<'PY' || status=1
import csv, re, sys
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
rows = list(csv.DictReader(lines))
metric = "gpu__time_duration.sum"
name_column = next(c for c in ("Kernel Name", "Function Name", "Name") if c in rows[0])
units = rows[0] if not rows[0].get("ID") else {}  # the raw page's second line: each metric's unit
scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(units.get(metric, "nsecond"), 1e-3)
def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None
kernels = [(r[name_column], number(r[metric]) * scale) for r in rows if r.get("ID") and number(r.get(metric, ""))]
def short(name):
    name = re.sub(r"\(anonymous namespace\)::|<unnamed>::|void ", "", name).strip()
    return re.split(r"[<(]", name, maxsplit=1)[0].split("::")[-1]
totals = {}
for name, us in kernels:
    count, total = totals.get(short(name), (0, 0.0))
    totals[short(name)] = (count + 1, total + us)
print(f"{len(kernels)} kernels, {sum(us for _, us in kernels):.1f} us in all")
print("| kernel | launches | us | share |")
print("|---|---|---|---|")
whole = sum(us for _, us in kernels) or 1.0
for name, (count, total) in sorted(totals.items(), key=lambda item: -item[1][1])[:25]:
    print(f"| {name} | {count} | {total:.1f} | {total / whole:.2f} |")
PY
  else
    echo "== stepprofile: no ncu on this machine"
  fi
fi

if [[ $stages == *" trace "* ]]; then
  # The real timeline of whole searches (no ncu serializing kernels): bench/cupti_trace.cc records every kernel, copy
  # and runtime call through CUPTI while bench_translate --profile-search brackets one search per batch and beam
  # size; trace_gaps.py splits each bracket into GPU work and idle gaps, and names what the host did in the gaps.
  model=build-device/paper_model
  [ -f "$model/config.json" ] || python3 tools/bench/make_paper_model.py --out "$model" >"$logs/paper_model.txt" 2>&1
  # shellcheck disable=SC2086
  ELEPHANT_TRACE="$logs/trace.csv" CUDA_INJECTION64_PATH=$PWD/build-device/bin/libelephant_cupti_trace.so \
    build-device/bin/bench_translate "$model" --device cuda --dtype fp16 --steps-only --profile-search \
    ${TRACE_FLAGS:---batch-sizes 8 --beams 1,2} >"$logs/trace_run.txt" 2>&1 || status=1
  echo "== CUPTI timeline of whole searches (${TRACE_FLAGS:---batch-sizes 8 --beams 1,2}): trace_gaps.txt"
  python3 tools/bench/trace_gaps.py "$logs/trace.csv" >"$logs/trace_gaps.txt" 2>&1 || status=1
  cat "$logs/trace_gaps.txt"
  xz -T0 -6 "$logs/trace.csv"
fi

if [[ $stages == *" kernels "* ]]; then
  # Nsight Compute over the first launches of the NCU_KERNELS kernels (default the grouped GEMM) of one
  # bench_cuda_moe row (NCU_FILTER): bandwidth against the peak, occupancy and where warps stall.
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -n "$ncu" ]; then
    "$ncu" --kernel-name "regex:${NCU_KERNELS:-grouped_gemm}" --launch-count "${NCU_LAUNCHES:-2}" --section SpeedOfLight \
      --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats \
      --section InstructionStats --section SourceCounters --import-source no --export "$logs/ncu" --force-overwrite \
      build-device/bin/bench_cuda_moe --benchmark_filter="${NCU_FILTER:-ExpertGemm/int4/32}" \
      --benchmark_min_time=0.01 >"$logs/ncu_run.txt" 2>&1 || status=1
    "$ncu" --import "$logs/ncu.ncu-rep" --print-details all >"$logs/ncu.txt" 2>&1 || status=1
    # Per-instruction SASS with its warp-stall samples: where the warps of the kernel wait, line by line.
    "$ncu" --import "$logs/ncu.ncu-rep" --page source --print-source sass --csv >"$logs/ncu_sass.csv" 2>&1 ||
      echo "(no SASS source page from this ncu: see ncu_sass.csv)"
    echo "== Nsight Compute: ${NCU_FILTER:-ExpertGemm/int4/32} (full report in ncu.txt, SASS with stalls in ncu_sass.csv)"
    grep -E "${NCU_KERNELS:-grouped_gemm}|Duration|DRAM Throughput|Memory Throughput|Occupancy|Stall|Issue Slots|Ipc" \
      "$logs/ncu.txt" | head -60
  else
    echo "== kernels: no ncu on this machine"
  fi
fi

if [[ $stages == *" cpu "* ]]; then
  build-device/bin/bench_cpu --benchmark_min_time=0.5 --benchmark_repetitions=3 \
    --benchmark_report_aggregates_only=true --benchmark_format=console >"$logs/bench_cpu.txt" 2>&1
  echo "== CPU benchmarks (medians)"
  grep median "$logs/bench_cpu.txt" | awk '{printf "%-36s %10s %s %s\n", $1, $2, $3, $NF}'
fi
echo "== done in $(($(date +%s) - start)) s, status $status"
exit $status
