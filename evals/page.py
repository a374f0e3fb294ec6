"""``report.html``: one self-contained page per run, built from the run folder alone.

Top to bottom: the verdict table (sortable) with the recipe beside it and the noise floor; the
charts (differences with their intervals, each seed's score as a dot, training loss of every arm
and seed); each arm's data card (sources, steps and their counts, what dedupe merged, what the
filter rejected, the selection map); the arms' answers to the same held-out prompts side by
side; and how the run was made. Every number links to the per-item file it comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datakit.html import (
    DASHES,
    GREY,
    PALETTE,
    Cell,
    Mark,
    Page,
    details,
    dot_chart,
    esc,
    figure,
    fmt,
    line_chart,
    pre,
    record_map,
    table,
)  # fmt: skip

VERDICT_COLOURS = {"better": PALETTE[2], "worse": PALETTE[4]}  # green and vermillion: apart for every eye


def items_link(arm: str, run: str | None = None, task: str | None = None) -> str:
    """The relative link to the per-item file of a run (or the arm's folder of them)."""
    if run is None:
        return f"items/{arm}/"
    return f"items/{arm}/{run}/{task}.jsonl"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_page(run_dir: Path, results: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write ``run_dir/report.html``; returns its path."""
    page = Page(f"{results['recipe']}: ablation report",
                f"model {esc(info['model'])} · template {esc(info.get('template', ''))} · seeds "
                f"{esc(', '.join(map(str, info['seeds'])))} · baseline arm <strong>{esc(results['baseline'])}</strong>")  # fmt: skip
    verdicts(page, run_dir, results)
    charts(page, run_dir, results)
    cards = {arm: _read_json(run_dir / "cards" / f"{arm}.json") for arm in results["arms"]}
    if any(cards.values()):
        data_cards(page, {arm: card for arm, card in cards.items() if card})
    answers = _read_json(run_dir / "answers.json")
    if answers:
        side_by_side(page, answers, results)
    about(page, results)
    return page.write(run_dir / "report.html")


# --- the verdict --------------------------------------------------------------------------


def verdicts(page: Page, run_dir: Path, results: dict[str, Any]) -> None:
    tasks = results["tasks"]
    page.section("Verdict", "verdict",
                 "Each row: one arm on one task, the mean over its runs with a 95% interval, then its difference "
                 "from the baseline and what that difference means. <em>better</em> or <em>worse</em> only where "
                 "the interval excludes zero; <em>within noise</em> where it does not; <em>not tested</em> where "
                 f"the arms have fewer than {results['min_seeds']} seeds, since training noise cannot be measured "
                 "then. Click a column heading to sort; every number links to the per-item file behind it.")  # fmt: skip
    rows = []
    for arm, by_task in results["arms"].items():
        for task, entry in by_task.items():
            e = entry["estimate"]
            d = entry.get("delta")
            runs = entry["runs"]
            seeds_html = " ".join(f'<a href="{esc(items_link(arm, run, task))}" title="{esc(run)}">{fmt(s)}</a>'
                                  for run, s in zip(runs, e["seeds"], strict=True))  # fmt: skip
            row = [
                Cell(esc(arm) + (" <span class='muted'>(baseline)</span>" if arm == results["baseline"] else "")),
                Cell(
                    esc(task)
                    + (" <span class='muted'>(lower is better)</span>" if tasks[task]["lower_is_better"] else "")
                ),  # fmt: skip
                Cell(fmt(e["mean"]), e["mean"], items_link(arm), "num"),
                Cell(f"[{fmt(e['low'])}, {fmt(e['high'])}]", e["high"] - e["low"], css="num"),
                Cell(seeds_html, css="num"),
            ]
            if d is None:
                row += [Cell("–", None), Cell(""), Cell("baseline", None)]
            else:
                interval = f"[{fmt(d['low'], sign=True)}, {fmt(d['high'], sign=True)}]" if d["tested"] else "–"
                css = d["verdict"] if d["verdict"] in VERDICT_COLOURS else ""
                reason = "" if d["tested"] else f" <span class='muted'>({esc(d['reason'])})</span>"
                row += [Cell(fmt(d["mean"], sign=True), d["mean"], items_link(arm), "num"),
                        Cell(interval, css="num"), Cell(f"<span class='{css}'>{esc(d['verdict'])}</span>{reason}")]  # fmt: skip
            rows.append(row)
    header = ["arm", "task", "mean", "95% interval", "each run", "Δ vs baseline", "Δ 95% interval", "verdict"]
    verdict_table = table(f"Arms × tasks ({len(tasks)} task{'s' * (len(tasks) != 1)}), baseline "
                          f"{results['baseline']}", header, rows)  # fmt: skip
    recipe = (run_dir / "recipe.yaml").read_text(encoding="utf-8") if (run_dir / "recipe.yaml").exists() else ""
    # the table keeps its width (scrolling sideways on a narrow screen); the recipe takes the
    # room left beside it, or goes below it when there is not enough
    page.add(f'<div class="figs"><div style="flex:0 1 auto;max-width:100%;overflow-x:auto">{verdict_table}</div>'
             f'<div style="flex:1 1 260px;min-width:260px"><h3>Recipe</h3>{pre(recipe)}'
             '<p class="muted"><a href="recipe.yaml">recipe.yaml</a> · <a href="results.json">results.json</a> · '
             '<a href="results.md">results.md</a></p></div></div>')  # fmt: skip
    page.add(noise_table(results))


def noise_table(results: dict[str, Any]) -> str:
    null_arm = results.get("null_arm")
    rows = []
    for task, t in results["tasks"].items():
        noise = t["noise"]
        null = results["arms"].get(null_arm or "", {}).get(task, {}).get("delta")
        null_cell = "–" if null is None else f"{fmt(null['mean'], sign=True)} ({null['verdict']})"
        if noise.get("seed_sd") is None:
            rows.append([task, Cell("not measured"), Cell(null_cell), Cell("–"), Cell("–"), str(t["items"])])
            continue
        needed = noise["seeds_for_effect"]
        needed_cell = (f"{needed} for {noise['effect']:g}" if needed
                       else f"more items, not seeds, for {noise['effect']:g}" if noise.get("items_limit")
                       else f"over 200 for {noise['effect']:g}")  # fmt: skip
        rows.append([task, Cell(f"{noise['seed_sd']:.4f}", noise["seed_sd"], css="num"), Cell(null_cell),
                     Cell(f"{noise['mde']:.4f} ({noise['seeds']} seeds)", noise["mde"], css="num"),
                     Cell(needed_cell), Cell(str(t["items"]), t["items"], css="num")])  # fmt: skip
    caption = ("Noise floor per task: the spread between training runs, the null arm's difference (training "
               "noise alone), the smallest difference these seeds and items detect 80% of the time, and the "
               "seeds needed for the recipe's effect size")  # fmt: skip
    header = ["task", "seed-to-seed sd", "null arm Δ", "minimum detectable effect", "seeds for effect", "items"]
    return table(caption, header, rows)


# --- charts -------------------------------------------------------------------------------


def charts(page: Page, run_dir: Path, results: dict[str, Any]) -> None:
    page.section("Charts", "charts",
                 "Left: each arm's difference from the baseline with its 95% interval (filled: tested; hollow: "
                 "not tested, no interval). Right: each run's score as a dot, so the spread between seeds is "
                 "visible beside the difference it must be told from.")  # fmt: skip
    baseline = results["baseline"]
    arms = list(results["arms"])
    for task, t in results["tasks"].items():
        lower = " (lower is better)" if t["lower_is_better"] else ""
        delta_rows = []
        for arm in arms:
            d = results["arms"][arm][task].get("delta")
            if d is None:
                continue
            colour = VERDICT_COLOURS.get(d["verdict"], GREY if d["tested"] else PALETTE[0])
            tip = f"{arm}: Δ {fmt(d['mean'], sign=True)}" + (
                f" [{fmt(d['low'], sign=True)}, {fmt(d['high'], sign=True)}] {d['verdict']}" if d["tested"]
                else " (not tested)")  # fmt: skip
            delta_rows.append((arm, [Mark(d["mean"], d.get("low"), d.get("high"), colour, not d["tested"], tip,
                                          items_link(arm))]))  # fmt: skip
        seed_rows = []
        for i, arm in enumerate(arms):
            entry = results["arms"][arm][task]
            colour = PALETTE[i % len(PALETTE)]
            marks = [Mark(s, color=colour, tip=f"{arm} {run}: {fmt(s)}", href=items_link(arm, run, task))
                     for run, s in zip(entry["runs"], entry["estimate"]["seeds"], strict=True)]  # fmt: skip
            seed_rows.append((arm, marks))
        delta_svg = dot_chart(delta_rows, f"{task}: difference from {baseline}{lower}", "difference", zero=True)
        seed_svg = dot_chart(seed_rows, f"{task}: each run's score{lower}", t["metric"] or "score")
        page.add(f'<div class="figs">{figure(delta_svg, f"Difference from {esc(baseline)} on {esc(task)}, 95% interval.")}'
                 f'{figure(seed_svg, f"Each run of each arm on {esc(task)}; a dot links to its per-item file.")}</div>')  # fmt: skip
    curves = loss_curves(run_dir, arms)
    if curves:
        page.add(figure(curves, "Training loss per trained token, every arm (colour) and seed (line style)."))


def loss_curves(run_dir: Path, arms: list[str]) -> str:
    series = []
    for log in sorted((run_dir / "loss").glob("*.jsonl")) if (run_dir / "loss").exists() else []:
        arm, _, run = log.stem.partition(".")
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        colour = PALETTE[arms.index(arm) % len(PALETTE)] if arm in arms else GREY
        seed = int(run.rsplit("-", 1)[-1]) if run.rsplit("-", 1)[-1].isdigit() else 0
        dash = DASHES[seed % len(DASHES)]
        series.append((f"{arm} {run}", colour, dash, [(r["step"], r["loss"]) for r in rows]))
    return line_chart(series, "Training loss", "step", "loss") if series else ""


# --- data cards ---------------------------------------------------------------------------


def data_cards(page: Page, cards: dict[str, dict[str, Any]]) -> None:
    page.section("Data", "data",
                 "What each arm trained on: its sources and mixing weights, then each step with what it read, "
                 "wrote and removed (by reason), and examples of what it did.")  # fmt: skip
    for arm, card in cards.items():
        page.add(f'<h3 id="data-{esc(arm)}">Arm {esc(arm)}: {card["records"]:,} records mixed'
                 f"{', ' + str(len(card['steps'])) + ' step(s)' if card['steps'] else ''}</h3>")  # fmt: skip
        sources = [[Cell(esc(s["path"])), Cell(f"{s['records']:,}", s["records"], css="num"),
                    Cell(f"{s['weight']:g}", s["weight"], css="num"), Cell(f"{s['taken']:,}", s["taken"], css="num")]
                   for s in card["sources"]]  # fmt: skip
        page.add(table(f"Sources of arm {arm}", ["file", "records", "weight", "taken"], sources, sortable=False))
        if card["steps"]:
            page.add(steps_table(arm, card["steps"]))
        for i, step in enumerate(card["steps"], 1):
            if step.get("merged"):
                page.add(f"<h4>Step {i} ({esc(step['step'])}): what it merged</h4>" + merged(step["merged"]))
            if step.get("rejected"):
                page.add(f"<h4>Step {i} ({esc(step['step'])}): what it rejected</h4>" + rejected(step["rejected"]))
            if step.get("map"):
                m = step["map"]
                shown = len(m["points"])
                note = "" if shown == m["records"] else f" ({shown:,} of {m['records']:,} records shown)"
                page.add(f"<h4>Step {i} (select): the selection map{note}</h4>"
                         + record_map([(p[0], p[1], bool(p[2])) for p in m["points"]], m["texts"], f"map-{arm}-{i}",
                                      f"{m['title']} (first two principal components)"))  # fmt: skip


def steps_table(arm: str, steps: list[dict[str, Any]]) -> str:
    rows = []
    for i, step in enumerate(steps, 1):
        r = step["report"]
        removed = "; ".join(f"{n:,} {reason}" for reason, n in sorted(r["removed"].items(), key=lambda kv: -kv[1]))
        options = ", ".join(f"{k}={v}" for k, v in step["options"].items()) or "defaults"
        rows.append([Cell(f"{i}. {esc(step['step'])}"), Cell(esc(options)),
                     Cell(f"{r['read']:,}", r["read"], css="num"), Cell(f"{r['written']:,}", r["written"], css="num"),
                     Cell(f"{sum(r['removed'].values()):,}", sum(r["removed"].values()), css="num"),
                     Cell(esc(removed) or "–"), Cell(f"{r['seconds']:.1f}", r["seconds"], css="num")])  # fmt: skip
    header = ["step", "settings", "read", "written", "removed", "removed, by reason", "seconds"]
    return table(f"Steps of arm {arm}, in order", header, rows, sortable=False)


def merged(clusters: list[dict[str, Any]]) -> str:
    parts = []
    for c in clusters:
        cells = [f"<div><strong>kept</strong> {esc(c['kept']['id'])}{pre(c['kept']['text'])}</div>"]
        cells += [f"<div><strong>removed</strong> {esc(r['id'])} · similarity {r['similarity']:.3f}{pre(r['text'])}</div>"
                  for r in c["removed"]]  # fmt: skip
        more = f"<p class='muted'>and {c['more']} more removed</p>" if c["more"] else ""
        parts.append(f'<p>{esc(c["stage"])} cluster:</p><div class="side">{"".join(cells)}</div>{more}')
    return "".join(parts)


def rejected(rows: list[dict[str, Any]]) -> str:
    return table("Rejected records (the rule, its reason, and the record)", ["record", "rule", "reason", "text"],
                 [[Cell(esc(r["id"])), Cell(esc(r["rule"])), Cell(esc(r["reason"])),
                   Cell(details("read", pre(r["text"])))] for r in rows], sortable=False)  # fmt: skip


# --- answers ------------------------------------------------------------------------------


def side_by_side(page: Page, answers: list[dict[str, Any]], results: dict[str, Any]) -> None:
    arms = list(results["arms"])
    page.section("Answers side by side", "answers",
                 "The same held-out prompts, answered greedily by each arm's first run, beside the reference "
                 "answer: what the numbers above look like in text.")  # fmt: skip
    for n, a in enumerate(answers, 1):
        cells = [f"<div><strong>reference</strong>{pre(a['reference'])}</div>"]
        cells += [
            f"<div><strong>{esc(arm)}</strong>{pre(a['answers'][arm])}</div>" for arm in arms if arm in a["answers"]
        ]
        page.add(f"<h3>Prompt {n} <span class='muted'>(held-out item {a['item']}, {esc(a['id'])})</span></h3>"
                 f'{pre(a["prompt"])}<div class="side">{"".join(cells)}</div>')  # fmt: skip


def about(page: Page, results: dict[str, Any]) -> None:
    page.section("How this run was made", "run")
    lines = []
    if results.get("heldout"):
        h = results["heldout"]
        lines.append(f"Held-out set: {h['records']} records, {h['removed']} removed as duplicates of training data.")
    if results["timings"]:
        lines.append("Wall time by stage: " + ", ".join(f"{k} {v:,.0f}s" for k, v in results["timings"].items()) + ".")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".")
    page.add("".join(f"<p>{esc(line)}</p>" for line in lines))
