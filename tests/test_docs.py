"""The docs quote only what their artifacts hold, and their links resolve.

A figure is tied to its artifact, a CSV or JSON file in ``results/``, in one of two ways:

- a link whose text holds numbers, e.g. ``[0.114](../results/db15k-15min.csv)``: each number is
  in some row of that file;
- a table whose preceding paragraph links a ``results/`` file: each body row's numbers (outside
  code spans) are all in one row of that file.

A quoted number matches an artifact's number when they are equal at the quoted precision
(``0.11`` matches ``0.1097``; ``3,528`` matches ``3528``; ``485k`` matches ``485k``).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("CONTRIBUTING.md")])
FIGURE_DOCS = tuple(ROOT / "docs" / name for name in ("benchmarks.md", "data.md", "evaluation.md", "results.md"))
"""Docs that report measurements: every decimal figure outside code must be tied to an artifact.
The other pages quote settings, formulas and estimates, not measurements."""

NOT_YET_WRITTEN = {
}
"""Pages other branches write, linked before they land. Empty this as they merge: a page listed
here that exists fails the test."""

NUMBER = re.compile(r"(?<![\w.])(?<!e-)(\d[\d,]*(?:\.\d+)?)([kM]?)(?=x?(?:[^\w.]|\.(?!\d)|$))")
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")
CODE = re.compile(r"`[^`]*`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
SCALE = {"": 1, "k": 1e3, "M": 1e6}


def numbers(text: str) -> list[tuple[float, int, str]]:
    """(value, decimals, as written) of each number in ``text``, code spans left out."""
    found = []
    for match in NUMBER.finditer(LINK.sub(lambda m: m.group(1), CODE.sub(" ", text))):
        digits, suffix = match.group(1).replace(",", ""), match.group(2)
        decimals = len(digits.partition(".")[2])
        found.append((float(digits) * SCALE[suffix], decimals, match.group(0)))
    return found


def matches(quoted: tuple[float, int, str], held: list[tuple[float, int, str]]) -> bool:
    value, decimals, _ = quoted
    return any(round(v, decimals) == round(value, decimals) and d >= decimals for v, d, _ in held)


def artifact_rows(path: Path) -> list[list[tuple[float, int, str]]]:
    """The numbers of each row of a CSV (header left out); a JSON record is one row of all its values."""
    if path.suffix == ".json":
        return [numbers(" ".join(map(str, leaves(json.loads(path.read_text())))))]
    with path.open(newline="") as f:
        return [[n for cell in row for n in numbers(cell)] for row in list(csv.reader(f))[1:]]


def leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def results_target(doc: Path, target: str) -> Path | None:
    path = (doc.parent / target.partition("#")[0]).resolve()
    return path if path.parent == ROOT / "results" else None


def tables(text: str) -> list[tuple[str, list[str]]]:
    """(the paragraph before it, its body rows) for each markdown table."""
    blocks = re.split(r"\n\s*\n", text)
    found = []
    for before, block in zip(["", *blocks], blocks, strict=False):
        lines = block.splitlines()
        if len(lines) >= 2 and lines[0].startswith("|") and set(lines[1]) <= set("|-: "):
            found.append((before, [line for line in lines[2:] if line.startswith("|")]))
    return found


def tied_rows(doc: Path, text: str) -> dict[str, Path]:
    """The body rows of each table whose preceding paragraph links an artifact, to that artifact."""
    tied = {}
    for before, body in tables(text):
        sources = [a for _, t in LINK.findall(before) if (a := results_target(doc, t)) is not None]
        tied.update({row: sources[-1] for row in body} if sources else {})
    return tied


def tied_figures(doc: Path) -> list[tuple[str, list[tuple[float, int, str]], Path, bool]]:
    """(where, numbers, artifact, by row) of every figure ``doc`` ties to an artifact."""
    text, tied = FENCE.sub("", doc.read_text()), []
    for label, target in LINK.findall(text):
        artifact = results_target(doc, target)
        if artifact is not None and "/" not in label and numbers(label):  # not a link named by its path
            tied.append((f"[{label}]", numbers(label), artifact, False))
    rows = tied_rows(doc, text).items()
    tied += [(row, numbers(row), artifact, True) for row, artifact in rows if numbers(row)]
    return tied


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_quoted_figures_are_in_their_artifacts(doc: Path) -> None:
    problems = []
    for where, quoted, artifact, by_row in tied_figures(doc):
        if not artifact.is_file():
            problems.append(f"{where}: {artifact.relative_to(ROOT)} does not exist")
            continue
        rows = artifact_rows(artifact)
        if by_row:
            if not any(all(matches(q, row) for q in quoted) for row in rows):
                problems.append(f"{where}: no row of {artifact.name} holds all of {[q[2] for q in quoted]}")
        else:
            held = [n for row in rows for n in row]
            problems += [f"{where}: {q[2]} not in {artifact.name}" for q in quoted if not matches(q, held)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", FIGURE_DOCS, ids=[d.name for d in FIGURE_DOCS])
def test_every_decimal_figure_is_tied_to_an_artifact(doc: Path) -> None:
    text = FENCE.sub("", doc.read_text())
    tied, loose = tied_rows(doc, text), []
    for line in text.splitlines():
        if line in tied:
            continue
        untied = LINK.sub(lambda m: " " if results_target(doc, m.group(2)) else m.group(1), line)
        loose += [f"{n[2]!r} in: {line.strip()}" for n in numbers(untied) if n[1] > 0]
    assert not loose, "figures not tied to a results/ file:\n" + "\n".join(loose)


def test_artifacts_name_their_command() -> None:
    """Each CSV row names its command (an exported study table: its study file) and its commit."""
    for path in sorted((ROOT / "results").glob("*.csv")):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows, f"{path.name}: no rows"
        for no, row in enumerate(rows, start=2):
            study = ROOT / "studies" / f"{row.get('study')}.py"
            command = row.get("command") or (f"kon-ray study run {study}" if study.is_file() else "")
            assert command.startswith("kon-ray "), f"{path.name}:{no}: no kon-ray command and no study file"
            commit = row.get("recorded_in") or row.get("measured_at") or row.get("git_commit") or ""
            assert re.fullmatch(r"[0-9a-f]{7,40}", commit), f"{path.name}:{no}: no commit it was measured at"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_links_to_repository_files_resolve(doc: Path) -> None:
    broken = []
    for _, target in LINK.findall(CODE.sub(" ", FENCE.sub("", doc.read_text()))):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.partition("#")[0]).resolve()
        name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.exists() and name not in NOT_YET_WRITTEN:
            broken.append(target)
    assert not broken, f"{doc.name}: links to missing files: {broken}"


def test_not_yet_written_pages_are_still_missing() -> None:
    landed = sorted(name for name in NOT_YET_WRITTEN if (ROOT / name).exists())
    assert not landed, f"{landed} exist now: take them out of NOT_YET_WRITTEN"


def test_the_readme_indexes_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    index = readme.partition("## Documentation")[2]
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name})" not in index]
    assert not missing, f"README.md's documentation table does not list {missing}"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.endswith("&& python -m pytest")]
    assert len(commands) == 1, "README.md: expected one test command ending in '&& python -m pytest'"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci, ".ci/run does not run README.md's test command"


def test_the_matching_rule() -> None:
    held = numbers("3528 steps, 0.1097, 485k queries, 1e-4")
    assert matches(numbers("3,528")[0], held) and matches(numbers("0.11")[0], held)
    assert matches(numbers("485k")[0], held) and not matches(numbers("0.12")[0], held)
    assert not matches(numbers("0.10970")[0], held), "a quote more precise than its artifact"
    written = numbers("float32, `lr=3e-3`, 1e-4, [1.5M](x.csv) and 88% of 1,185 at 1,727x.")
    assert [n[2] for n in written] == ["1.5M", "88", "1,185", "1,727"]


def test_a_json_record_is_one_row(tmp_path: Path) -> None:
    record = tmp_path / "bench.json"
    record.write_text(json.dumps({"figures": {"step_ms": [270.4, 331.0]}, "checks": [{"ratio": 1.48}]}))
    (row,) = artifact_rows(record)
    assert all(matches(numbers(q)[0], row) for q in ("270", "331.0", "1.48"))
    assert not matches(numbers("1.4")[0], row)


def readme_example(layout: str, folder: Path) -> tuple[str, Path]:
    """The README's five lines of ``layout`` (``file:line``, as grep prints them) written to ``folder``,
    each split the example leaves out given its first training line; and the paragraph above them."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"\*\*{re.escape(layout)}\*\*(.*?)```text\n(.*?)```", readme, re.DOTALL)
    assert found, f"README.md: no {layout} example"
    folder.mkdir()
    for line in found.group(2).splitlines():
        name, _, content = line.partition(":")
        with (folder / name).open("a") as f:
            f.write(content + "\n")
    train = next(folder.glob("train*"))
    for split in ("valid", "test"):
        path = folder / train.name.replace("train", split)
        if not path.exists():
            path.write_text(train.read_text().splitlines(keepends=True)[0])
    return found.group(1), folder


def test_readme_data_examples_load(tmp_path: Path) -> None:
    from kon_ray.data import load_kg

    _, folder = readme_example("Ids files", tmp_path / "ids")
    kg = load_kg(str(folder))
    assert kg.entity_names == ("Anarchism", "Franciaország") and kg.relation_names == ("see also", "country")
    assert kg.train.tolist() == [[0, 0, 1]]  # head tail relation

    _, folder = readme_example("TSV labels", tmp_path / "labels")
    kg = load_kg(str(folder))
    assert (len(kg.train), len(kg.valid), len(kg.test)) == (3, 1, 1)
    assert kg.entity_names[:3] == ("Barack Obama", "Michelle Obama", "Honolulu")
    assert kg.relation_names == ("spouse", "place of birth", "located in")

    text, folder = readme_example("TSV ids with names", tmp_path / "named")
    kg = load_kg(str(folder))
    assert kg.entity_names == ("Barack Obama", "Michelle Obama", "Honolulu")
    assert kg.train.tolist() == [[0, 0, 1], [0, 1, 2]]
    said = re.search(r"relations as `([^`]+)` and `([^`]+)`", " ".join(text.split()))
    assert said and kg.relation_names == said.groups()  # the side without a names file, named by its ids


def test_readme_states_when_loss_negatives_must_be_lowered(tmp_path: Path) -> None:
    from kon_ray.config import ConfigError, RunConfig, apply_overrides
    from kon_ray.data import check_data, load_kg

    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(r"`loss\.negatives` \((\d+) by default\) must be below the number of entities, so a KG "
                     r"of at most (\d+) entities needs a smaller one", readme)  # fmt: skip
    assert said, "README.md: no sentence on loss.negatives and the number of entities"
    default, most = map(int, said.groups())
    assert default == RunConfig().loss.negatives == most

    def ring(entities: int) -> Path:
        folder = tmp_path / str(entities)
        folder.mkdir()
        lines = [f"e{i}\tr\te{(i + 1) % entities}\n" for i in range(entities)]
        for split, part in (("train", lines[2:]), ("valid", lines[:1]), ("test", lines[1:2])):
            (folder / f"{split}.tsv").write_text("".join(part))
        return folder

    small = load_kg(str(ring(most)))
    with pytest.raises(ConfigError, match=r"loss\.negatives=\d+ or lower"):
        check_data(RunConfig(), small)
    check_data(apply_overrides(RunConfig(), ["loss.negatives=32"]), small)
    check_data(RunConfig(), load_kg(str(ring(most + 1))))


RECORDED_STUDIES = {"db15k-15min.csv": "cpu_15min.py", "db15k-equal-queries.csv": "cpu_equal_queries.py"}
"""Tables recorded with ``kon-ray train`` before their study file existed: each row's command must
be one of the study's trials, so that running the study measures those rows again, unless the row
says why not (``not_a_study_trial``), and then it must not be one."""


@pytest.mark.parametrize("name", sorted(RECORDED_STUDIES))
def test_recorded_rows_are_trials_of_their_study(name: str) -> None:
    from kon_ray.config import RunConfig, apply_overrides
    from kon_ray.studies.study import load_study

    study = load_study(ROOT / "studies" / RECORDED_STUDIES[name])
    with (ROOT / "results" / name).open(newline="") as f:
        rows = list(csv.DictReader(f))
    wrong = []
    for no, row in enumerate(rows, start=2):
        words = row["command"].split()
        assert words[:2] == ["kon-ray", "train"], f"{name}:{no}: not a kon-ray train command"
        params = {"variant": row["config.variant"], "seed": int(row["seed"])}
        same = apply_overrides(RunConfig(), words[2:]) == apply_overrides(RunConfig(), study.overrides(params))
        if same == bool(row.get("not_a_study_trial")):
            wrong.append(f"{name}:{no}: {row['config.variant']!r} seed {row['seed']}: {row['command']}")
    assert not wrong, "rows their study would not run again, or that say so wrongly:\n" + "\n".join(wrong)
