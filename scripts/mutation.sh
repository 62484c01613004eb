#!/usr/bin/env bash
# Mutation testing (mutmut) of K-ON's equations and protocol rules, outside CI.
#
#   scripts/mutation.sh MODULE [MUTANT_GLOB]    MODULE: losses, model, evaluation or negatives
#
# Mutates kon_ray/MODULE.py (kon_ray/data/negatives.py for negatives) and runs, per mutant,
# the fast tests of that module that cover the mutated function. Works in a copy of the tree
# under .mutation/MODULE/ (git-ignored), so the tree can change while it runs and the repo's
# pyproject.toml needs no mutmut section. Every run re-tests all the module's mutants (or those
# matching MUTANT_GLOB, e.g. 'kon_ray.losses.x_sft*'), so that new tests count. Writes the
# counts to results/mutation/MODULE.json and the survivors' diffs to
# results/mutation/MODULE-survivors.txt.
#
# Environment: MUTATION_CHILDREN parallel mutants (default 1: the machine is shared),
# MUTATION_ALL_TESTS=1 adds tests/test_fidelity_protocol.py (whole-run rules; slower per mutant).
set -euo pipefail
cd "$(dirname "$0")/.."
module=${1:?usage: scripts/mutation.sh losses|model|evaluation|negatives [MUTANT_GLOB]}

case "$module" in  # the module's file and its fast tests
  losses) file=kon_ray/losses.py  # step_losses (Algorithm 1): whole-model tests
          tests=(tests/test_losses.py tests/test_fidelity_losses.py
                 tests/test_fidelity_protocol.py::test_contrastive_positive_is_the_target
                 tests/test_fidelity_protocol.py::test_step_losses_are_the_weighted_terms_and_their_sum
                 tests/test_fidelity_protocol.py::test_kl_target_detach_setting_reaches_the_loss
                 tests/test_training.py::test_htt_losses_on_real_steps_equal_the_masked_padded_form) ;;
  model) file=kon_ray/model.py; tests=(tests/test_model.py tests/test_fidelity_model.py) ;;
  evaluation) file=kon_ray/evaluation.py
              tests=(tests/test_evaluation.py tests/test_fidelity_evaluation.py) ;;
  negatives) file=kon_ray/data/negatives.py
             tests=(tests/test_negatives.py tests/test_fidelity_negatives.py) ;;
  *) echo "scripts/mutation.sh: unknown module '$module': expected losses, model, evaluation or negatives" >&2
     exit 2 ;;
esac
dotted=${file%.py}
glob=${2:-${dotted//\//.}.*}
if [[ "${MUTATION_ALL_TESTS:-0}" == 1 ]]; then
  tests+=(tests/test_fidelity_protocol.py)
fi
command -v mutmut >/dev/null || { echo "mutmut is not installed: pip install -e '.[mutation]'" >&2; exit 2; }

work=.mutation/$module
mkdir -p "$work"
rm -rf "$work/kon_ray" "$work/tests"
cp -a kon_ray tests "$work/"  # -a keeps mtimes: mutmut re-mutates only changed files
quoted() { printf '"%s", ' "$@"; }
cat >"$work/pyproject.toml" <<EOF
[tool.mutmut]
source_paths = ["kon_ray"]
only_mutate = ["$file"]
pytest_add_cli_args_test_selection = [$(quoted "${tests[@]}")]
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-q"]
# torch's thread pools are not fork-safe: fork each mutant from a clean server process
process_isolation = "forkserver"
use_git_change_detection = false

[tool.pytest.ini_options]
markers = ["slow: end-to-end runs", "gpu: needs a CUDA device"]
filterwarnings = ["ignore::DeprecationWarning"]
EOF

cd "$work"
unset PYTHONPATH  # mutmut puts its mutated copy first on sys.path
mutmut run --max-children "${MUTATION_CHILDREN:-1}" "$glob"
# The record: counts and the survivors, each with its diff, in results/mutation/MODULE.*
out=../../results/mutation
mkdir -p "$out"
mutmut export-cicd-stats >/dev/null && cp mutants/mutmut-cicd-stats.json "$out/$module.json"
mutmut results | awk -F: '{print $1}' | while read -r name; do
  mutmut show "$name" | grep -E '^(#|[-+][^-+])'  # the name and the changed lines
done >"$out/$module-survivors.txt"
echo "$(grep -c '^#' "$out/$module-survivors.txt") survivors: results/mutation/$module-survivors.txt"
