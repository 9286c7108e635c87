"""Result records and README tables written from them (multidiff.results, docs/evaluation.md)."""
import json
from pathlib import Path

import pytest

from multidiff.cli import main
from multidiff.results import update
from multidiff.train.testing import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def test_repository_tables_match_their_result_files():
    """Every marked table in the repository's READMEs is what its result files give: no number in them
    was typed by hand, none is stale, no result file is missing."""
    assert update(REPO, check=True) == []


def record(seed, **metrics):
    return {"format": "multidiff-eval/1", "metrics": metrics, "training_seed": seed,
            "command": f"multidiff eval runs/s{seed} --num 8", "checkpoint": f"runs/s{seed}"}


@pytest.fixture()
def checkout(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    folder = tmp_path / "recipes" / "toy" / "results"
    folder.mkdir(parents=True)
    for seed, score in ((0, 0.60), (1, 0.64), (2, 0.68)):
        (folder / f"test-seed{seed}.json").write_text(json.dumps(record(seed, nna=score, cov=0.5)))
    (folder / "tables.yaml").write_text(
        "toy-table:\n"
        "  readme: recipes/toy/README.md\n"
        "  columns: [{metric: nna, header: 1-NNA, format: .3f}, {metric: cov, format: .2f}]\n"
        "  rows:\n"
        "    - label: the recipe\n"
        "      results: recipes/toy/results/test-seed*.json\n"
        "      target: {metric: nna, at_most: 0.65}\n")
    (tmp_path / "recipes" / "toy" / "README.md").write_text(
        "# toy\n\n<!-- results:toy-table -->\n| typed | by hand |\n<!-- /results:toy-table -->\n\ntext after\n")
    return tmp_path


def test_tables_are_written_from_the_files_and_checked(checkout):
    readme = checkout / "recipes" / "toy" / "README.md"
    assert update(checkout, check=True) == [f"{readme}: tables are stale; run `multidiff results`"]
    assert update(checkout) == []
    text = readme.read_text()
    assert "| the recipe | 0, 1, 2 | 0.640 ± 0.040 | 0.50 ± 0.00 | nna <= 0.65: met | `multidiff eval runs/s0 --num 8` |" in text
    assert "typed" not in text and text.endswith("text after\n")
    assert update(checkout, check=True) == []
    # a new seed's file that moves the mean past the target makes the table stale, then "not met"
    (checkout / "recipes/toy/results/test-seed3.json").write_text(json.dumps(record(3, nna=0.80, cov=0.5)))
    assert update(checkout, check=True)
    update(checkout)
    assert "nna <= 0.65: not met" in readme.read_text()
    # fewer than 3 training seeds never meet a target, whatever their mean
    for seed in (1, 2, 3):
        (checkout / f"recipes/toy/results/test-seed{seed}.json").unlink()
    update(checkout)
    assert "| the recipe | 0 | 0.600 |" in readme.read_text()
    assert "nna <= 0.65: not met yet (1 of the 3 training seeds measured)" in readme.read_text()
    (checkout / "recipes/toy/results/test-seed1.json").write_text(json.dumps(record(1, nna=0.80, cov=0.5)))
    update(checkout)
    assert "nna <= 0.65: not met so far (2 of the 3 training seeds measured)" in readme.read_text()


def test_hand_made_or_orphan_tables_are_reported(checkout):
    readme = checkout / "recipes" / "toy" / "README.md"
    readme.write_text(readme.read_text() + "\n<!-- results:typed -->\n| 0.5 |\n<!-- /results:typed -->\n"
                      "a marker quoted in text, `<!-- results:quoted -->`, is not a table\n")
    problems = update(checkout, check=True)
    assert any("'typed' has markers but no declaration" in p for p in problems)
    assert not any("quoted" in p for p in problems)
    for f in (checkout / "recipes/toy/results").glob("*.json"):
        f.unlink()
    assert any("no result file matches" in p for p in update(checkout, check=True))


def test_results_command_exit_codes(checkout, capsys):
    assert main(["results", "--root", str(checkout), "--check"]) == 1
    assert main(["results", "--root", str(checkout)]) == 0
    assert main(["results", "--root", str(checkout), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_eval_writes_a_complete_record(tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(REPO / "recipes/toy/gmm.yaml"), *tiny_overrides(run, steps=3), "trainer.seed=5"]) == 0
    result = tmp_path / "results" / "r.json"
    assert main(["eval", str(run), "--num", "64", "--steps", "4", "--seed", "3", "--out", str(tmp_path / "e"),
                 "--result", str(result), "--device", "cpu"]) == 0
    rec = json.loads(result.read_text())
    assert rec == json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert rec["format"] == "multidiff-eval/1" and rec["training_seed"] == 5 and rec["samples_seen"] == 192
    assert rec["sampling"]["seed"] == 3 and rec["sampling"]["steps"] == 4 and rec["sampling"]["weights"] == "ema.safetensors"
    assert rec["command"].startswith(f"multidiff eval {run} --num 64") and "--result" in rec["command"]
    assert rec["version"] and "time" in rec and rec["num_samples"] == 64
    assert set(rec["reference"]) == {"manifest", "sha1", "split"}
    assert all(isinstance(v, float) for v in rec["metrics"].values())
