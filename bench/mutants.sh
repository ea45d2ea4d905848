#!/usr/bin/env bash
# Mutation testing (issue 13): the seven behaviours issue 13 broke by hand, each with the
# in-process test that must then fail, and cargo-mutants over the safety-critical modules
# (.cargo/mutants.toml) against the in-process tests (`cargo test --lib`).
#
#   bench/mutants.sh         everything; rewrites docs/mutants.md (about an hour on 2 cores)
#   bench/mutants.sh --ci    CI's subset: the seven rows, then one shard of the mutants
#                            (round-robin, MUTANTS_SHARDS (32) of them, picked by the commit),
#                            so that every mutant is run by some commit; fails on a survivor
#
# Both work on a copy of the tree in a scratch directory (the tree itself is never mutated)
# and build into this tree's target directory, so the dependencies built by the tests are
# reused. MUTANTS_JOBS (default 1) builds and tests that many mutants at once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-full}
case $mode in full | --ci) ;; *) echo "usage: bench/mutants.sh [--ci]" >&2 && exit 2 ;; esac
version=27.1.0
jobs=${MUTANTS_JOBS:-1}
# 508 mutants in 32 shards: about 16 for a commit, which with the seven rows keeps CI's step
# under 5 minutes on 2 cores.
shards=${MUTANTS_SHARDS:-32}

if ! cargo mutants --version 2>/dev/null | grep -qx "cargo-mutants $version"; then
  echo "mutants: installing cargo-mutants $version" >&2
  # A debug build compiles in half the time, and the tool's own speed is not what is waited on.
  cargo install --locked --debug --quiet cargo-mutants --version "$version"
fi

target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$root/$target_dir
export CARGO_TARGET_DIR=$target_dir
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tree=$scratch/tree
mkdir "$tree"
tar --exclude=./target --exclude=./.git --exclude=./.cache -cf - . | tar -xf - -C "$tree"

# ---------------------------------------------------------------------------------------------
# The seven rows: each breaks one behaviour exactly as issue 13 did, and names the test that
# must fail. A pattern that is no longer in the code fails the script: update it with the code.

rows=(
  "the verify loop accepts a whitelist that does not list the IP"
  "src/reconcile.rs"
  "reconcile::tests::the_proof_waits_until_the_whitelist_lists_the_ip"
  "Ok(whitelist) if whitelist.covers(ip) => Attempt::Done(whitelist),"
  "Ok(whitelist) if true => Attempt::Done(whitelist),"

  "two URLs run by one operator vote twice"
  "src/detect/mod.rs"
  "detect::tests::two_urls_of_one_operator_are_one_vote"
  "if !voters.contains(&operator) {"
  "if true {"

  "an IPv4 provider's IPv6 answer is accepted"
  "src/detect/mod.rs"
  "detect::tests::an_answer_of_the_wrong_family_is_rejected"
  "if Family::of(ip) != family {"
  "if false {"

  "no 6 s pause after a rate-limited answer"
  "src/reconcile.rs"
  "reconcile::tests::a_rate_limited_answer_pauses_at_least_six_seconds"
  "delay = delay.max(RATE_LIMITED_PAUSE);"
  ""

  "concurrent rechecks are not coalesced (the queue is not drained)"
  "src/sidecar.rs"
  "sidecar::tests::concurrent_rechecks_share_one_round"
  "while let Ok(more) = rechecks.try_recv() {"
  "while let Some(more) = None {"

  "API clients are not rebuilt after an IP change"
  "src/sidecar.rs"
  "sidecar::tests::an_egress_change_rebuilds_the_clients_and_is_proven"
  "if let Err(e) = self.flow.renew_clients() {"
  "if let Err(e) = Ok::<(), crate::sendsms::BuildError>(()) {"

  "detection clients keep connections alive across a change"
  "src/detect/echo.rs"
  "detect::echo::tests::every_lookup_opens_a_connection_of_its_own"
  ".pool_max_idle_per_host(0)"
  ""
)

lib_test() { (cd "$tree" && cargo test --locked --lib -- --exact "$@" 2>&1); }

echo "mutants: the seven rows (control: each test passes unbroken)" >&2
tests=()
for ((i = 0; i < ${#rows[@]}; i += 5)); do tests+=("${rows[i + 2]}"); done
control=$(lib_test "${tests[@]}") || { echo "$control" >&2; echo "a row's test fails unbroken" >&2; exit 1; }
rows_md=$scratch/rows.md
{
  echo "| behaviour broken | how | test that fails | s |"
  echo "|---|---|---|---|"
} >"$rows_md"
for ((i = 0; i < ${#rows[@]}; i += 5)); do
  what=${rows[i]} file=$tree/${rows[i + 1]} test=${rows[i + 2]} old=${rows[i + 3]} new=${rows[i + 4]}
  content=$(cat "$file" && printf x) && content=${content%x}
  rest=${content#*"$old"}
  if [[ $content != *"$old"* || $rest == *"$old"* ]]; then
    echo "row \"$what\": \`$old\` is not in ${rows[i + 1]} exactly once; update bench/mutants.sh" >&2
    exit 1
  fi
  cp "$file" "$scratch/saved"
  printf '%s' "${content/"$old"/"$new"}" >"$file"
  started=$SECONDS
  if output=$(lib_test "$test"); then
    echo "$output" >&2
    echo "row \"$what\": $test still passes with the behaviour broken" >&2
    exit 1
  fi
  if ! grep -qF "test $test ... FAILED" <<<"$output"; then
    echo "$output" >&2
    echo "row \"$what\": the broken code did not build, or $test did not run" >&2
    exit 1
  fi
  mv "$scratch/saved" "$file"
  # Restored with an mtime older than the broken build: touched, so that the next build in this
  # target dir rebuilds from it instead of reusing the broken binary.
  touch "$file"
  how=$([[ -n $new ]] && echo "\`$old\` → \`$new\`" || echo "\`$old\` removed")
  echo "| $what | ${rows[i + 1]}: $how | \`$test\` | $((SECONDS - started)) |" >>"$rows_md"
  echo "mutants: row \"$what\": $test fails" >&2
done

# ---------------------------------------------------------------------------------------------
# cargo-mutants

out=$scratch/out
args=(--dir "$tree" --output "$out" --no-shuffle)
if ((jobs > 1)); then
  # Each job builds in a copy of its own: a shared target directory would serialize them.
  args+=(--jobs "$jobs")
  unset CARGO_TARGET_DIR
else
  args+=(--in-place)
fi
if [[ $mode == --ci ]]; then
  commit=$(git rev-parse HEAD 2>/dev/null || echo 0)
  shard=$((16#${commit:0:8} % shards))
  # The test profile the suite was just built with: no dependency is built again. The suite
  # has just passed on this tree, so the unmutated baseline is not run again (about 40 s), and
  # the timeout it would have set is given: five times the in-process tests' 4 s.
  args+=(--shard "$shard/$shards" --sharding round-robin --profile test --baseline skip --timeout 20)
  echo "mutants: shard $shard of $shards (from commit ${commit:0:8})" >&2
fi
echo "mutants: cargo mutants ${args[*]}" >&2
started=$SECONDS
status=0
cargo mutants "${args[@]}" >"$scratch/mutants.log" 2>&1 || status=$?
elapsed=$((SECONDS - started))
tail -n 5 "$scratch/mutants.log" >&2
# 0: all caught; 2: missed; 3: timeouts only (caught too); anything else is a failure to run.
if ((status != 0 && status != 2 && status != 3)); then
  cat "$scratch/mutants.log" >&2
  exit "$status"
fi
if [[ $mode == --ci ]]; then
  # Not the exit code alone: with timeouts as well, cargo-mutants exits 3 even when it missed.
  if ((status == 2)) || [[ -s $out/mutants.out/missed.txt ]]; then
    echo "mutants: missed (no test fails with these changes):" >&2
    cat "$out/mutants.out/missed.txt" >&2
    exit 1
  fi
  echo "mutants: shard $shard/$shards: no survivor in ${elapsed} s" >&2
  exit 0
fi

# Every exclusion in the config must still match exactly one mutant, or it excludes nothing (or
# more than was judged equivalent).
mapfile -t globs < <(sed -n '/^examine_globs/,/^]/p' "$tree/.cargo/mutants.toml" | grep -o '"[^"]*"' | tr -d '"')
files=()
for glob in "${globs[@]}"; do files+=(-f "$glob"); done
(cd "$tree" && cargo mutants --list --no-config "${files[@]}") >"$scratch/all.txt"
lib_tests=$(cd "$tree" && cargo test --locked --lib -- --list 2>/dev/null | grep -c ': test$')
properties=$(cd "$tree" && cargo test --locked --lib -- --list 2>/dev/null | grep -c '^testing::properties::.*: test$')
python3 - "$tree/.cargo/mutants.toml" "$scratch/all.txt" "$out/mutants.out/outcomes.json" \
  "$rows_md" "$elapsed" "$jobs" "$(nproc)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$lib_tests" "$properties" >docs/mutants.md <<'PY'
import collections, datetime, json, re, sys

(config, all_path, outcomes_path, rows_path, elapsed, jobs, cores, commit, lib_tests,
 properties) = sys.argv[1:]
outcomes = json.load(open(outcomes_path))
names = [line.strip() for line in open(all_path) if line.strip()]

# Exclusions: each pattern with the comment lines above it as its reason.
excluded = []
reason = []
in_list = False
for line in open(config):
    stripped = line.strip()
    if stripped.startswith("exclude_re"):
        in_list = True
        continue
    if in_list and stripped.startswith("]"):
        break
    if in_list and stripped.startswith("#"):
        reason.append(stripped.lstrip("# ").strip())
    elif in_list and stripped[:1] in ("'", '"'):
        literal = stripped.rstrip(",")
        # A TOML literal string ('...') has no escapes; a basic one ("...") reads as JSON.
        pattern = literal[1:-1] if literal[0] == "'" else json.loads(literal)
        matched = [n for n in names if re.search(pattern, n)]
        if len(matched) != 1:
            sys.exit(f"exclusion {pattern!r} matches {len(matched)} mutants: {matched}")
        excluded.append((matched[0], " ".join(reason)))
        reason = []

by_file = collections.defaultdict(collections.Counter)
missed = []
baseline = {}
for outcome in outcomes["outcomes"]:
    mutant = outcome["scenario"]
    if not isinstance(mutant, dict):
        baseline = {p["phase"]: p["duration"] for p in outcome["phase_results"]}
        continue
    mutant = mutant["Mutant"]
    summary = outcome["summary"]
    by_file[mutant["file"]][summary] += 1
    if summary == "MissedMutant":
        missed.append(mutant["name"])

kinds = ["CaughtMutant", "Timeout", "Unviable", "MissedMutant"]
total = collections.Counter()
for counts in by_file.values():
    total.update(counts)
generated = len(names)
if sum(total.values()) + len(excluded) != generated:
    sys.exit(f"{sum(total.values())} outcomes and {len(excluded)} exclusions, of {generated} mutants")
minutes, seconds = divmod(int(elapsed), 60)

print("# Mutation testing")
print()
print(f"Generated by `bench/mutants.sh` on {datetime.date.today()} at {commit} ({cores} cores,")
print(f"`--jobs {jobs}`, cargo-mutants {outcomes['cargo_mutants_version']}). Each mutant is one small change to")
print("the code (an operator swapped, a condition forced, a function body replaced); the in-process")
print(f"tests (`cargo test --lib`: {lib_tests} tests, {properties} of them properties) run against it and must fail.")
print("A mutant they let pass is *missed*: a behaviour no test checks. The modules are the")
print("safety-critical ones of issue 13, listed in `.cargo/mutants.toml`.")
print()
print("## Result")
print()
print(f"- **{generated} mutants generated**, {len(excluded)} of them excluded as equivalent (below)")
print(f"- **{total['CaughtMutant'] + total['Timeout']} killed**: {total['CaughtMutant']} by a failing test, {total['Timeout']} by a test that never")
print("  finished (a loop the mutant made endless; cargo-mutants stops it after its timeout)")
print(f"- **{total['Unviable']} unviable**: the mutant does not compile (a `Default::default()` for a type that has none)")
print(f"- **{total['MissedMutant']} missed**")
print(f"- wall time: {minutes} min {seconds} s, of which the unmutated tree's build took")
print(f"  {baseline.get('Build', 0):.0f} s and its tests {baseline.get('Test', 0):.1f} s")
print()
print("| file | killed | by timeout | unviable | missed |")
print("|---|---|---|---|---|")
for file in sorted(by_file):
    c = by_file[file]
    print(f"| `{file}` | {c['CaughtMutant']} | {c['Timeout']} | {c['Unviable']} | {c['MissedMutant']} |")
if missed:
    print()
    print("Missed:")
    print()
    for name in missed:
        print(f"- `{name}`")
print()
print("## Excluded as equivalent")
print()
print("Each is excluded in `.cargo/mutants.toml` by a pattern that matches it alone (the script")
print("fails when a pattern matches none or several), with the reason no test can tell it apart.")
print()
print("| mutant | why it is equivalent |")
print("|---|---|")
for name, why in excluded:
    print(f"| `{name}` | {why} |")
print()
print("## The seven rows of issue 13")
print()
print("Issue 13 broke seven behaviours at once and every test still passed. The script breaks each")
print("one alone in a scratch copy, checks the named test fails (and passes unbroken), and restores it.")
print()
print(open(rows_path).read().rstrip())
PY
echo "wrote docs/mutants.md" >&2
