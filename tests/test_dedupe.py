"""Deduplication on real fixtures: what is found, what is kept, and that nothing is lost."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import bench_path, fixture_path

import datakit
from datakit import minhash
from datakit.errors import DatakitError, StepError
from datakit.value_guard import changed_values

ALPACA = fixture_path("llama-factory/alpaca_en_demo.json")
GSM8K = bench_path("gsm8k/train.jsonl")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def typo(text: str, rng: random.Random, rate: float = 0.01) -> str:
    chars = list(text)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    for i in rng.sample(letters, max(1, int(len(letters) * rate))):
        chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz")
    return "".join(chars)


def removed_ids(clusters_path: str) -> dict[str, str]:
    """removed id -> the id kept in its place."""
    out = {}
    for line in Path(clusters_path).read_text().splitlines():
        cluster = json.loads(line)
        for r in cluster["removed"]:
            out[r["id"]] = cluster["kept"]
    return out


def test_exact_duplicates_match_an_independent_count(tmp: Path) -> None:
    source = fixture_path("fastchat/dummy_conversation.json")
    rows = json.loads(source.read_text())
    seen, expected_removed = set(), 0
    for row in rows:  # the user turns, case-folded, whitespace collapsed
        prompt = " ".join(t["value"] for t in row["conversations"] if t["from"] == "human")
        key = re.sub(r"\s+", " ", prompt.lower()).strip()
        expected_removed += key in seen
        seen.add(key)
    summary = datakit.run("dedupe", source, tmp / "out.json", method="exact", on="prompt").report
    assert expected_removed > 100
    assert summary.removed == {"exact duplicate": expected_removed}
    assert len(json.loads((tmp / "out.json").read_text())) == len(rows) - expected_removed


@pytest.fixture
def near_duplicate_set(tmp: Path) -> tuple[Path, dict[str, str], set[str]]:
    """Alpaca originals, perturbed copies (copy id -> original id), and GSM8K hard negatives."""
    rng = random.Random(7)
    originals = [r for r in json.loads(ALPACA.read_text()) if len(r["output"].split()) > 30][:120]
    rows, copies = [], {}
    for n, r in enumerate(originals):
        rows.append({"id": f"orig-{n}", **r})
    for n, r in enumerate(originals[:60]):
        kind = ("typo", "case", "reorder")[n % 3]
        if kind == "typo":
            copy = {**r, "instruction": typo(r["instruction"], rng), "output": typo(r["output"], rng)}
        elif kind == "case":
            copy = {**r, "instruction": r["instruction"].upper() + "  ", "output": r["output"].replace(" ", "  ")}
        else:
            sentences = re.split(r"(?<=[.!?])\s+", r["output"])
            copy = {**r, "output": " ".join(sentences[1:] + sentences[:1])}
        rows.append({**copy, "id": f"copy-{n}-{kind}"})
        copies[f"copy-{n}-{kind}"] = f"orig-{n}"
    negatives = set()
    problems = [json.loads(line) for line in GSM8K.read_text().splitlines()[:40]]
    for n, p in enumerate(problems):
        rows.append({"id": f"gsm-{n}", "instruction": p["question"], "input": "", "output": p["answer"]})

        def bump(m: re.Match) -> str:
            return str(int(m.group(0)) + 3)

        question, answer = re.sub(r"\d+", bump, p["question"]), re.sub(r"\d+", bump, p["answer"])
        rows.append({"id": f"gsm-{n}-other-numbers", "instruction": question, "input": "", "output": answer})
        negatives.add(f"gsm-{n}-other-numbers")
    return write_jsonl(tmp / "near.jsonl", rows), copies, negatives


def test_near_duplicates_found_hard_negatives_kept(near_duplicate_set, tmp: Path) -> None:
    path, copies, negatives = near_duplicate_set
    summary = datakit.run("dedupe", path, tmp / "out.jsonl").report
    removed = removed_ids(summary.side_outputs["clusters"])
    found = {c for c in copies if removed.get(c) == copies[c]}
    assert len(found) >= 0.9 * len(copies), sorted(set(copies) - found)
    assert not negatives & set(removed), "templated problems with other numbers were merged"
    assert all(r.startswith("copy-") for r in removed)  # nothing else removed: precision
    assert "bands x" in summary.text()


def test_nothing_is_lost_and_keep_first_is_honoured(near_duplicate_set, tmp: Path) -> None:
    path, _, _ = near_duplicate_set
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    summary = datakit.run("dedupe", path, tmp / "out.jsonl", keep="first").report
    written = [json.loads(line)["id"] for line in (tmp / "out.jsonl").read_text().splitlines()]
    clusters = [json.loads(line) for line in Path(summary.side_outputs["clusters"]).read_text().splitlines()]
    removed = [r["id"] for c in clusters for r in c["removed"]]
    assert sorted(written + removed) == sorted(ids)
    assert written == [i for i in ids if i not in set(removed)]  # input order kept
    for cluster in clusters:
        assert all(cluster["kept_index"] < r["index"] for r in cluster["removed"])
        assert all(0 < r["similarity"] <= 1 and r["linked_to"] for r in cluster["removed"])
        # every removed record's links lead back to the kept one, within the cluster
        via = {r["id"]: r["linked_to"] for r in cluster["removed"]}
        for record in via:
            path = [record]
            while path[-1] != cluster["kept"]:
                assert via[path[-1]] not in path, path
                path.append(via[path[-1]])
    assert summary.read == len(ids) == summary.written + sum(summary.removed.values())


def test_clusters_file_similarity_is_the_share_of_equal_signature_values(near_duplicate_set, tmp: Path) -> None:
    """With 160 permutations a share k/160 is not exact in float32: the file shows it rounded
    from the exact share (0.4562 for 73 of 160, not float32's 0.4563)."""
    path, _, _ = near_duplicate_set
    summary = datakit.run("dedupe", path, tmp / "out.jsonl", method="minhash", num_perm=160).report
    clusters = [json.loads(line) for line in Path(summary.side_outputs["clusters"]).read_text().splitlines()]
    shown = [r["similarity"] for c in clusters if c["stage"] == "minhash" for r in c["removed"]]
    assert shown and all(s in {round(k / 160, 4) for k in range(161)} for s in shown)


def test_the_clusters_file_names_the_pair_that_linked_each_record() -> None:
    """A chain 0-1-2 kept at 0 and a pair 3-4 kept at 4: 2 was removed through 1, not through 0."""
    import polars as pl

    from datakit.dedupe import StageClusters, StageResult, review_rows

    pairs = np.array([[0, 1], [1, 2], [3, 4]])
    result = StageResult(pairs, np.array([0.9, 0.8, 0.7], dtype=np.float32), lambda i, j: 0.5 + 0.1 * (j - i))
    clusters = [(0, np.array([0, 1, 2]), np.array([0, 1])), (4, np.array([3, 4]), np.array([2]))]
    ids = pl.Series([f"r{k}" for k in range(6)])
    rows = list(review_rows([StageClusters("minhash", result, clusters)], ids))
    assert [
        (row["kept"], [(r["id"], r["linked_to"], r["link_similarity"]) for r in row["removed"]]) for row in rows
    ] == [
        ("r0", [("r1", "r0", 0.9), ("r2", "r1", 0.8)]),
        ("r4", [("r3", "r4", 0.7)]),
    ]
    assert [r["similarity"] for row in rows for r in row["removed"]] == [0.6, 0.7, 0.4]


def test_keep_longest_and_keep_score(tmp: Path) -> None:
    base = "Explain why the sky looks blue during the day and red at sunset, in simple words for a child."
    answer = "Sunlight is made of many colours. Air scatters blue light the most, so the sky looks blue."

    def record(id: str, reply: str, quality: int) -> dict:
        messages = [datakit.message("user", base), datakit.message("assistant", reply)]
        return datakit.new_record(messages, id=id, meta={"quality": quality})

    records = [
        record("short", answer, 2),
        record("long", answer + " At sunset light travels further.", 1),
        record("best", answer + " ", 9),
    ]
    path = tmp / "in.jsonl"
    datakit.write_records(records, path)
    for keep, winner in (("first", "short"), ("longest", "long"), ("score:quality", "best")):
        datakit.run("dedupe", path, tmp / f"{keep}.jsonl", keep=keep, threshold=0.3)
        kept = [json.loads(line)["id"] for line in (tmp / f"{keep}.jsonl").read_text().splitlines()]
        assert kept == [winner], keep


def test_backends_agree_on_signatures_and_clusters(near_duplicate_set, tmp: Path) -> None:
    path, _, _ = near_duplicate_set
    texts = [json.loads(line)["output"] for line in path.read_text().splitlines()]
    hashes, offsets = minhash.shingle_hashes(texts)
    assert np.array_equal(minhash.signatures(hashes, offsets), minhash.signatures_datasketch(hashes, offsets))
    a = datakit.run("dedupe", path, tmp / "a.jsonl", backend="numpy").report
    b = datakit.run("dedupe", path, tmp / "b.jsonl", backend="datasketch").report
    assert Path(a.side_outputs["clusters"]).read_text() == Path(b.side_outputs["clusters"]).read_text()
    sigs = minhash.signatures(hashes, offsets)
    params = minhash.choose_lsh_params(0.45)
    ours = minhash.candidate_pairs(minhash.band_keys(sigs, params), np.diff(offsets) > 0)
    theirs = minhash.candidate_pairs_datasketch(sigs, np.diff(offsets) > 0, params)
    assert len(ours) > 0 and ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.6, 0.8, 0.9])
def test_lsh_bands_reach_the_recall_promised(threshold: float) -> None:
    params = minhash.choose_lsh_params(threshold)
    assert params.bands * params.rows <= 128
    assert params.recall_at(threshold) >= 0.9
    # and it shows in practice: pairs of sets built at about that Jaccard are candidates
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(200):
        shared = rng.integers(0, 2**32, int(200 * threshold / (1 + threshold) * 2))
        a = np.unique(np.r_[shared, rng.integers(0, 2**32, 200 - len(shared))]).astype(np.uint32)
        b = np.unique(np.r_[shared, rng.integers(0, 2**32, 200 - len(shared))]).astype(np.uint32)
        sigs = minhash.signatures(np.r_[a, b], np.array([0, len(a), len(a) + len(b)]))
        keys = minhash.band_keys(sigs, params)
        found += bool((keys[0] == keys[1]).any())
    assert found / 200 >= 0.85


def test_multi_turn_records_compare_whole_conversations(tmp: Path) -> None:
    rows = json.loads(fixture_path("axolotl/conversation.json").read_text())
    turns = rows["conversations"] if isinstance(rows, dict) else rows[0]["conversations"]
    first = {"id": "a", "conversations": turns}
    reversed_later_turns = [{"from": t["from"], "value": t["value"][::-1]} for t in turns[2:]]
    second = {"id": "b", "conversations": turns[:2] + reversed_later_turns}
    path = write_jsonl(tmp / "chats.jsonl", [first, second])
    assert datakit.run("dedupe", path, tmp / "all.jsonl", on="all").report.removed == {}
    assert datakit.run("dedupe", path, tmp / "first.jsonl", on="response", method="exact").report.removed == {}
    assert datakit.run("dedupe", path, tmp / "p.jsonl", on="prompt", method="minhash").report.removed == {}
    same_start = {"id": "c", "conversations": turns[:2]}
    path = write_jsonl(tmp / "two.jsonl", [{"id": "d", "conversations": turns[:2]}, same_start])
    assert datakit.run("dedupe", path, tmp / "out.jsonl", method="exact").report.removed == {"exact duplicate": 1}


def test_value_guard_tells_templates_from_typos() -> None:
    assert changed_values("What is 17+25?", "What is 38+4?")
    assert changed_values("What is the capital of France?", "What is the capital of Germany?")
    assert changed_values("Natalia sold 48 clips in April.", "Natalia sold 52 clips in April.")
    assert not changed_values("What is the capital of France?", "what is teh capital of Frnace?")
    assert not changed_values("Natalia sold 48 clips in April and 24 in May.", "Natalia sold 48 clips in April")
    assert not changed_values("Instruction: Name a colour.", "Name a colour.")


def test_the_value_guard_compares_values_as_nfkc_makes_them(tmp: Path) -> None:
    """ "１７" (fullwidth) and "17" are one number once NFKC-normalised: near copies that differ by
    that (and a typo, so they are no exact copies) are duplicates, not swapped values. The scan
    keeps the NFKC texts for the guard, spread here over many parts by small batches."""
    from datakit.pipeline import LocalExecutor

    rng = random.Random(3)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "seven",
        "small",
        "birds",
        "sing",
        "about",
        "old",
        "towns",
    ]
    rows = []
    for k in range(12):
        body = " ".join(rng.choice(words) for _ in range(60))
        rows.append({"instruction": f"Question {k}: Natalia sold １７ clips in April and then {body}", "output": "ok"})
        rows.append({"instruction": f"Question {k}: Natalia sold 17 clips in Aprli and then {body}", "output": "ok"})
    path = write_jsonl(tmp / "fullwidth.jsonl", rows)
    report = datakit.run(
        "dedupe", path, tmp / "out.jsonl", method="minhash", executor=LocalExecutor(batch_size=5)
    ).report
    assert report.removed == {"minhash duplicate": 12}
    assert "; 0 kept apart by the value guard" in " ".join(report.notes)


def test_bad_input_names_the_line(tmp: Path) -> None:
    path = tmp / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(StepError, match=r"bad.jsonl:2: missing required field 'output'"):
        datakit.run("dedupe", path, tmp / "out.jsonl")
    assert not (tmp / "out.jsonl").exists()


def test_cli_prints_the_summary_and_writes_the_review_file(near_duplicate_set, tmp: Path) -> None:
    path, copies, _ = near_duplicate_set
    out = tmp / "clean.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "datakit.cli", "dedupe", str(path), str(out), "--clusters", str(tmp / "review.jsonl")],
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert re.search(r"records: read \d+ = written \d+ \+ removed \d+", err)
    assert re.search(r"\d+  minhash duplicate", err) and re.search(r"\d+  exact duplicate", err)
    by_stage = defaultdict(int)
    for line in (tmp / "review.jsonl").read_text().splitlines():
        cluster = json.loads(line)
        by_stage[cluster["stage"]] += len(cluster["removed"])
    assert sum(by_stage.values()) >= 0.9 * len(copies)


REFERENCE = Path(__file__).parent / "fixtures" / "dedupe"
REFERENCE_CASES = {
    "exact": {"method": "exact"},
    "minhash": {},
    "minhash_longest_prompt": {"keep": "longest", "on": "prompt"},
    "minhash_score_noguard": {"keep": "score:score", "value_guard": False, "threshold": 0.6},
}


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_streaming_clusters_equal_the_in_memory_reference(case: str, tmp: Path) -> None:
    """The clusters files written for a mixed set with the whole set in one batch (Alpaca,
    planted copies, GSM8K problems with other numbers; tests/fixtures/dedupe/SOURCES.md says
    when each was written), byte for byte, with batches so small that every table is spread
    over many parts."""
    from datakit.pipeline import LocalExecutor

    clusters = tmp / "clusters.jsonl"
    datakit.run("dedupe", REFERENCE / "mixed.jsonl", tmp / "out.jsonl", side_paths={"clusters": clusters},
                executor=LocalExecutor(batch_size=97), **REFERENCE_CASES[case])  # fmt: skip
    assert clusters.read_text() == (REFERENCE / f"clusters_{case}.jsonl").read_text()


def test_json_lines_written_from_the_scan_equal_the_records_read_again(tmp: Path) -> None:
    """A JSONL output is written from rows encoded during the scan (the input is read once);
    any other output reads the input a second time. Both must hold the same records."""
    from datakit.pipeline import LocalExecutor

    once = datakit.run("dedupe", REFERENCE / "mixed.jsonl", tmp / "out.jsonl", executor=LocalExecutor(batch_size=97))
    twice = datakit.run("dedupe", REFERENCE / "mixed.jsonl", tmp / "out.json", executor=LocalExecutor(batch_size=97))
    rows = [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]
    assert rows == json.loads((tmp / "out.json").read_text())
    for key in ("read", "written", "removed", "rows_not_records", "figures", "notes"):
        assert getattr(once.report, key) == getattr(twice.report, key)
    assert 0 < len(rows) < once.report.read


def test_a_record_that_cannot_be_written_fails_only_when_it_is_kept(tmp: Path) -> None:
    """Tool schemas have no place in Alpaca; a record with them is an error only if it is
    written, not when dedupe removes it as a copy of one without them."""
    plain = {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi!"}]}
    with_tools = {**plain, "tools": '[{"name": "wave", "description": "Wave.", "parameters": {}}]'}
    kept_plain = write_jsonl(tmp / "plain_first.jsonl", [plain, with_tools])
    report = datakit.run("dedupe", kept_plain, tmp / "out.jsonl", to="alpaca").report
    assert report.written == 1 and report.removed == {"exact duplicate": 1}
    kept_tools = write_jsonl(tmp / "tools_first.jsonl", [with_tools, plain])
    with pytest.raises(StepError, match=r"record \w+ cannot be written as alpaca: .*tool"):
        datakit.run("dedupe", kept_tools, tmp / "out2.jsonl", to="alpaca")
    assert not (tmp / "out2.jsonl").exists()


def test_records_in_memory_give_the_same_clusters_as_a_file(tmp: Path) -> None:
    records = list(datakit.read_records(REFERENCE / "mixed.jsonl"))
    result = datakit.run("dedupe", records)
    expected = [json.loads(line) for line in (REFERENCE / "clusters_minhash.jsonl").read_text().splitlines()]
    assert list(result.side["clusters"]) == expected
    assert len(result.records) == len(records) - sum(len(c["removed"]) for c in expected)


def spaced_copy(tmp: Path, bad_lines: tuple[int, ...] = ()) -> Path:
    """The reference set with blank lines here and there (a record's position is not its line),
    and a malformed row at each of ``bad_lines`` (1-based lines of the new file)."""
    rng = random.Random(0)
    lines = []
    for line in (REFERENCE / "mixed.jsonl").read_text().splitlines(keepends=True):
        lines.append(line)
        lines += ["\n"] * (rng.randrange(1, 3) if rng.random() < 0.1 else 0)
    for number in bad_lines:
        lines[number - 1] = '{"instruction": "cut off here\n'
    path = tmp / "spaced.jsonl"
    path.write_text("".join(lines))
    return path


def test_worker_processes_scan_to_the_bytes_of_one_process(tmp: Path) -> None:
    """A JSON-lines input scanned by worker processes (blocks of lines, positions handed out in
    file order) gives the output, clusters file and report of one process, byte for byte: with
    blocks so small that there are dozens, blank lines between rows, and gzip (whose blocks are
    sent to the workers rather than read by them). No worker outlives the run."""
    import gzip

    import psutil

    from datakit.pipeline import LocalExecutor

    source = spaced_copy(tmp)
    packed = tmp / "spaced.jsonl.gz"
    packed.write_bytes(gzip.compress(source.read_bytes()))
    for path in (source, packed):  # (a record's source, named in its meta, differs between them)
        one = datakit.run("dedupe", path, tmp / "one.jsonl", executor=LocalExecutor(workers=1)).report
        assert not any("worker" in note for note in one.notes)
        many = datakit.run("dedupe", path, tmp / "many.jsonl",
                           executor=LocalExecutor(workers=2, block_bytes=50_000)).report  # fmt: skip
        assert "scanned by 2 worker processes" in many.notes
        for name in ("one.jsonl", "one.jsonl.clusters.jsonl"):
            assert (tmp / name.replace("one", "many")).read_bytes() == (tmp / name).read_bytes()
        for key in ("read", "written", "removed", "rows_not_records", "figures"):
            assert getattr(many, key) == getattr(one, key)
        assert [n for n in many.notes if "worker" not in n] == one.notes
        assert psutil.Process().children(recursive=True) == []
    assert one.read == 1699 and sum(one.removed.values()) > 250


def test_worker_processes_count_rows_that_hold_no_record(tmp: Path) -> None:
    """P3 score_eval rows whose answer is wrong hold no record: the workers count them, and
    positions skip them, as one process does."""
    from datakit.io import read_rows
    from datakit.pipeline import LocalExecutor

    rows = [r.data for r in read_rows(fixture_path("p3/hellaswag_complete_first_then_score_eval/train/dataset.arrow"))]
    source = write_jsonl(tmp / "p3.jsonl", rows * 3)  # three copies: exact duplicates to find
    one = datakit.run("dedupe", source, tmp / "one.jsonl", executor=LocalExecutor(workers=1)).report
    many = datakit.run("dedupe", source, tmp / "many.jsonl",
                       executor=LocalExecutor(workers=2, block_bytes=4_000)).report  # fmt: skip
    assert sum(one.rows_not_records.values()) > 0 and one.removed
    assert (many.rows_not_records, many.removed, many.written) == (one.rows_not_records, one.removed, one.written)
    assert (tmp / "many.jsonl").read_bytes() == (tmp / "one.jsonl").read_bytes()


def test_a_bad_row_met_by_a_worker_is_reported_as_one_process_reports_it(tmp: Path) -> None:
    """Two malformed rows in different blocks: the first in the file is the one named, with its
    line, whichever worker reaches its row first."""
    from datakit.pipeline import LocalExecutor

    source = spaced_copy(tmp, bad_lines=(1500, 400))
    messages = []
    for executor in (LocalExecutor(workers=1), LocalExecutor(workers=2, block_bytes=20_000)):
        with pytest.raises(StepError) as caught:
            datakit.run("dedupe", source, tmp / "out.jsonl", executor=executor)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{source}:400: malformed JSON")
    assert not (tmp / "out.jsonl").exists()


def test_worker_processes_on_an_empty_file_write_an_empty_output(tmp: Path) -> None:
    from datakit.pipeline import LocalExecutor

    (tmp / "empty.jsonl").write_text("\n\n")
    report = datakit.run("dedupe", tmp / "empty.jsonl", tmp / "out.jsonl", from_format="alpaca",
                         executor=LocalExecutor(workers=2)).report  # fmt: skip
    assert (report.read, report.written, (tmp / "out.jsonl").read_bytes()) == (0, 0, b"")


def test_a_damaged_gzip_after_a_bad_row_names_the_bad_row_as_one_process_does(tmp: Path) -> None:
    """The driver reads the gzip ahead of the workers: the damage it meets is raised only after
    the blocks before it, so a bad row earlier in the file is still the error named."""
    import gzip

    from datakit.pipeline import LocalExecutor

    lines = spaced_copy(tmp, bad_lines=(5,)).read_bytes().splitlines(keepends=True)[:40]
    damaged = tmp / "damaged.jsonl.gz"
    damaged.write_bytes(gzip.compress(b"".join(lines))[:-40])  # the stream cut in its last line
    messages = []
    # blocks 0 (the bad row) and 1 (the damage) go out at once: the damage is met first
    for executor in (LocalExecutor(workers=1), LocalExecutor(workers=2, block_bytes=20_000)):
        with pytest.raises(DatakitError) as caught:
            datakit.run("dedupe", damaged, tmp / "out.jsonl", from_format="canonical", executor=executor)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{damaged}:5: malformed JSON")


def test_a_worker_process_killed_mid_scan_is_an_error_that_says_so(tmp: Path) -> None:
    """A worker that dies (here SIGKILL, as the kernel's out-of-memory killer sends it) stops the
    run with an error naming what happened, no output, and no other worker left running."""
    import signal
    import threading
    import time

    import psutil

    from datakit.pipeline import LocalExecutor

    source = spaced_copy(tmp)
    errors: list[BaseException] = []

    def run() -> None:
        executor = LocalExecutor(tmp / "work", workers=2, block_bytes=8_000)
        try:
            datakit.run("dedupe", source, tmp / "out.jsonl", executor=executor)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not list((tmp / "work").rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the workers have scanned a block (of about 200)
    workers = [p for p in psutil.Process().children() if "scan_workers" in " ".join(p.cmdline())]
    workers[0].send_signal(signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(errors) == 1 and "scan worker process ended unexpectedly (killed by signal 9 (Killed)" in str(errors[0])
    assert not (tmp / "out.jsonl").exists()
    assert psutil.Process().children(recursive=True) == []


def test_polars_puts_the_jemalloc_setting_the_scan_workers_expect_first() -> None:
    """A scan worker's jemalloc setting goes after polars' own, which it finds by its text
    (POLARS_JEMALLOC): another polars that wrote another one would quietly undo the setting."""
    import os

    from datakit.scan_workers import POLARS_JEMALLOC

    environment = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    code = "import os, polars; print(os.environ['_RJEM_MALLOC_CONF'])"
    written = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert written.stdout.strip() == POLARS_JEMALLOC


def test_scan_workers_keep_freed_memory_unless_the_user_set_the_allocators(monkeypatch) -> None:
    """Scan workers start with allocator settings that keep freed memory for the next block
    (and one thread each); a setting the user's environment has is left as the user set it.
    Polars' jemalloc setting (polars puts its own first, and a later option wins) gets the
    workers' after polars' own and before the user's."""
    import psutil

    from datakit.scan_workers import POLARS_JEMALLOC, WORKER_ALLOCATORS, WORKER_JEMALLOC, Worker, stop

    monkeypatch.setenv("MALLOC_TOP_PAD_", "4096")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("_RJEM_MALLOC_CONF", f"{POLARS_JEMALLOC},narenas:2")  # as polars leaves the user's
    worker = Worker.start()
    try:
        environment = psutil.Process(worker.process.pid).environ()
    finally:
        stop([worker], finished=False)
    assert environment["MALLOC_TOP_PAD_"] == "4096"
    assert environment["MALLOC_TRIM_THRESHOLD_"] == WORKER_ALLOCATORS["MALLOC_TRIM_THRESHOLD_"]
    assert environment["POLARS_MAX_THREADS"] == "1"
    assert environment["_RJEM_MALLOC_CONF"] == f"{WORKER_JEMALLOC},narenas:2"
