"""`dedup review`: label pairs in a real Chromium with the keyboard, kill the server, find the labels again, and
see calibrate and select use them; the server's refusals (paths, other origins, hosts, a taken port).

The run is over two Flickr8k shards with planted copies, embedded by the default detector.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DEDUP, FLICKR, ROOT, run_cli
from test_report import CHROMIUM, CHROMIUM_ARGS

from dedup.io.labels import LabelBook, read_labels


@pytest.fixture(scope="module")
def review_run(tmp_path_factory, shared):
    from dedup.tools.planting import plant

    folder = tmp_path_factory.mktemp("review")
    shards = [str(FLICKR / f"flickr8k-224-{i:05d}.tar") for i in range(2)]
    planted = plant(shards, folder / "data", sources=40, copies=(1, 2), seed=3, limit=600)
    run_cli("run", folder / "data", "--run-dir", folder / "run")
    return folder / "run", planted


@contextlib.contextmanager
def review_server(run_dir: Path, *args: str):
    """`dedup review` in a subprocess on a free port; yields its address and the process, kills it after."""
    process = subprocess.Popen(
        [*DEDUP, "review", str(run_dir), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"http://[\d.:\[\]a-z]+/", line)
            url = found.group(0) if found else None
        assert url, f"dedup review printed no address:\n{''.join(seen)}"
        yield url, process, "".join(seen)
    finally:
        process.kill()
        process.wait(timeout=30)


def fetch(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def token_of(url: str) -> str:
    _, page = fetch(url)
    return re.search(rb'name="dedup-token" content="([^"]+)"', page).group(1).decode()


def groups_by_key(run_dir: Path) -> dict[str, int]:
    table = pq.read_table(run_dir / "manifest.parquet", columns=["key", "group_id"])
    return dict(zip(table["key"].to_pylist(), table["group_id"].to_pylist()))


@pytest.mark.slow
def test_each_pair_shows_its_relation_and_evidence_and_the_relation_filters_them(review_run):
    """Clicked through in Chromium: every found pair says what kind of match it is; choosing a relation shows only
    its pairs, with the alignment's evidence where there is one."""
    from playwright.sync_api import sync_playwright

    run_dir, _ = review_run
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install chromium (the browser test needs a real browser)")
    relations = pq.read_table(run_dir / "pairs.parquet")["relation"].to_pylist()
    chosen = max(set(relations), key=relations.count)
    with review_server(run_dir) as (url, _, _):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1300, "height": 1000}, bypass_csp=True)
            page.goto(url)
            page.wait_for_selector('[data-testid="pair-card"]')
            options = page.locator('[data-testid="filter-relation"] option').all_inner_texts()
            assert any(text.startswith(chosen.replace("_", " ")) for text in options), options
            page.select_option('[data-testid="filter-relation"]', chosen)
            page.wait_for_function(
                f"[...document.querySelectorAll('[data-testid=relation]')].every(r => r.dataset.relation === '{chosen}')"
            )
            shown = page.locator('[data-testid="relation"]')
            assert shown.count() == min(24, relations.count(chosen))
            if chosen in ("copy", "partial", "same_scene"):
                assert "overlap covers" in page.locator('[data-testid="evidence"]').first.inner_text()
                # the focused pair aligned by its keypoints, on the key and back (once the page stopped loading:
                # a page rendered after the key would replace the card it opened)
                page.wait_for_load_state("networkidle")
                page.keyboard.press("o")
                overlay = page.locator('.pair.focused [data-testid="overlay"]')
                page.wait_for_function(
                    "(() => { const i = document.querySelector('.pair.focused [data-testid=overlay] img');"
                    " return i && i.complete && i.naturalWidth > 300; })()"
                )
                assert page.locator(".pair.focused .images").is_hidden()
                artifacts = ROOT / "test-artifacts"
                artifacts.mkdir(exist_ok=True)
                page.screenshot(path=str(artifacts / "review-aligned.png"))
                page.keyboard.press("o")
                assert overlay.is_hidden() and page.locator(".pair.focused .images").is_visible()
            browser.close()
        rows = pq.read_table(run_dir / "groups.parquet", columns=["group_id"])["group_id"].to_pylist()
        apart = next(row for row in range(1, len(rows)) if rows[row] != rows[0])
        status, body = fetch(f"{url}overlay/0/{apart}")  # two photos of different groups: nothing to align
        assert status == 422 and b"do not align" in body
        assert fetch(f"{url}overlay/0/{len(rows)}")[0] == 404


@pytest.mark.slow
def test_label_with_the_keyboard_survive_a_kill_and_change_the_output(review_run, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    run_dir, _ = review_run
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install chromium (the browser test needs a real browser)")
    before = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    with review_server(run_dir) as (url, _, _):
        _, body = fetch(url + "api/pairs?limit=24")
        shown = json.loads(body)["pairs"]
        # a pair alone in its group, labelled not a duplicate, must end up apart; the others are labelled duplicate
        plan = ["n" if pair["a"]["group_size"] == 2 and not pair["signal"] == "near miss" else "d" for pair in shown]
        plan = plan[:21]
        assert "n" in plan[:20] and "d" in plan[:20], plan
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            # the test's own page.evaluate needs eval, which the app's Content-Security-Policy forbids
            page = browser.new_page(viewport={"width": 1300, "height": 1000}, bypass_csp=True)
            page.goto(url)
            page.wait_for_selector('[data-testid="pair-card"]')
            counter = page.get_by_test_id("labelled-count")
            for count, key in enumerate(plan, start=1):
                page.keyboard.press(key)
                expect(counter).to_have_text(f"{count} labelled")
            page.keyboard.press("u")  # the 21st label is taken back
            expect(counter).to_have_text("20 labelled")
            images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
            assert images and all(images), "every thumbnail on the page loads"
            assert page.locator('[data-testid="pair-card"]').count() == 24
            for hook in ("mark-duplicate", "mark-distinct", "skip", "undo", "next-page"):
                assert page.locator(f'[data-testid="{hook}"]').count() >= 1, hook
            browser.close()
    labels = read_labels(run_dir / "labels.parquet")
    assert len(labels) == 20

    with review_server(run_dir) as (url, _, _):  # killed and started again: the 20 labels are there
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1300, "height": 1400}, bypass_csp=True)
            page.goto(url)
            page.wait_for_selector('[data-testid="pair-card"]')
            expect(page.get_by_test_id("labelled-count")).to_have_text("20 labelled")
            badges = page.evaluate(
                "[...document.querySelectorAll('[data-testid=pair-card]')].map(c => c.dataset.label)"
            )
            assert badges[:20] == ["distinct" if key == "n" else "duplicate" for key in plan[:20]]
            page.wait_for_load_state("networkidle")
            artifacts = ROOT / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "review.png"))
            browser.close()

    calibrated = run_cli("calibrate", run_dir)
    assert "labels made in review" in calibrated.stderr + calibrated.stdout
    rows = json.loads((run_dir / "calibration.json").read_text())["thresholds"]
    assert all("precision" in row and "recall" in row for row in rows)

    distinct = [pair for pair, label in labels.items() if not label.duplicate]
    run_cli("select", "--run-dir", run_dir)
    after = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    by_key = {row["key"]: row for row in after}
    for (_, first), (_, second) in distinct:
        assert by_key[first]["group_id"] != by_key[second]["group_id"]
        assert by_key[first]["status"] == by_key[second]["status"] == "kept"
        assert "not a duplicate of" in by_key[first]["person_label"]
        assert "a person labelled it" in by_key[second]["reason"]
    touched_groups = {row["group_id"] for row in before if row["key"] in {key for pair in labels for _, key in pair}}
    changed = [
        (old["key"], old["group_id"])
        for old, new in zip(before, after)
        if (old["status"], old["group_id"], old["reason"]) != (new["status"], new["group_id"], new["reason"])
    ]
    assert changed and all(group in touched_groups for _, group in changed), "select changes only what labels touch"

    run_cli("write", "--run-dir", run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reconciles"] is True
    assert summary["decided_with_person_labels"]["kept"] >= 2 * len(distinct)


@pytest.mark.slow
def test_the_server_refuses_paths_other_origins_and_other_hosts(review_run, tmp_path):
    run_dir, _ = review_run
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    link = run_dir / "secret-link"
    link.symlink_to(secret)
    try:
        with review_server(run_dir, "--near-miss-sample", "0") as (url, _, said):
            port = url.rsplit(":", 1)[1].strip("/")
            for path in (
                "../secret.txt",
                "static/../../secret.txt",
                "static/..%2f..%2fsecret.txt",
                "static/%2e%2e%2fserver.py",
                "thumb/..%2f..%2fsecret-link",
                f"static/{secret}",
                f"thumb/{secret}",
                "%2fetc%2fpasswd",
                "secret-link",
                "static/secret-link",
                "labels.parquet",
                "thumb/-1",
                "thumb/999999999",
            ):
                with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:  # sent as written
                    raw.sendall(f"GET /{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                    answer = b"".join(iter(lambda: raw.recv(65536), b""))
                status = int(answer.split(b" ", 2)[1])
                assert status in (400, 404), (path, answer[:200])
                assert b"not for the browser" not in answer
            assert fetch(url + "static/review.js")[0] == 200
            assert fetch(url + "thumb/0")[0] == 200

            token = token_of(url)
            payload = json.dumps({"pair": 0, "label": "distinct"}).encode()
            json_headers = {"Content-Type": "application/json", "X-Dedup-Token": token}
            form = b"pair=0&label=distinct"
            refused = [
                fetch(
                    url + "api/label",
                    form,
                    {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
                ),
                fetch(url + "api/label", payload, {"Content-Type": "application/json"}),  # no token
                fetch(url + "api/label", payload, {**json_headers, "Origin": "http://evil.example"}),
                fetch(
                    url + "api/label",
                    form,
                    {"Content-Type": "application/x-www-form-urlencoded", "X-Dedup-Token": token},
                ),
            ]
            assert [status for status, _ in refused] == [403, 403, 403, 415]
            assert fetch(url + "api/summary", headers={"Host": f"evil.example:{port}"})[0] == 403
            assert not (run_dir / "labels.parquet").exists() or len(read_labels(run_dir / "labels.parquet")) == 20

            assert "listening on" not in said  # loopback: nothing to warn about

            # the port is taken: a clear message and exit code 2
            taken = run_cli("review", run_dir, "--port", port, check=False)
            assert taken.returncode == 2
            assert f"port {port} on 127.0.0.1 is in use" in taken.stderr
    finally:
        link.unlink()


@pytest.mark.slow
def test_listening_beyond_loopback_is_said_aloud(review_run):
    run_dir, _ = review_run
    with review_server(run_dir, "--host", "0.0.0.0", "--near-miss-sample", "0") as (url, _, said):
        assert "listening on 0.0.0.0, not only this machine" in said
        assert url.startswith("http://0.0.0.0:")


def test_review_needs_groups_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run_cli("review", run_dir, "--port", "0", check=False)
    assert result.returncode == 2
    assert "groups.parquet does not exist; run `dedup find` first" in result.stderr


@pytest.mark.slow
def test_a_label_whose_pair_is_gone_is_kept_and_reported(review_run, tmp_path):
    """After find runs again with a stricter threshold, a label on a pair no longer found stays in the file; review
    says how many, and select counts it as not found."""
    run_dir, _ = review_run
    stricter = tmp_path / "stricter"
    stricter.mkdir()
    for name in ("groups.parquet", "pairs.parquet", "find.json", "manifest.parquet"):
        (stricter / name).write_bytes((run_dir / name).read_bytes())
    (stricter / "embeddings").symlink_to(run_dir / "embeddings")
    pairs = pq.read_table(run_dir / "pairs.parquet").to_pylist()
    groups = pq.read_table(run_dir / "groups.parquet").to_pylist()
    weakest = min(pairs, key=lambda p: p["similarity"])
    book = LabelBook(stricter / "labels.parquet")
    sample = lambda row: (groups[row]["shard"], groups[row]["key"])
    first, second = sample(weakest["a"]), sample(weakest["b"])
    book.set((min(first, second), max(first, second)), duplicate=False)
    run_cli(
        "find",
        "--run-dir",
        stricter,
        "--embeddings",
        run_dir / "embeddings",
        "--set",
        "find.threshold=0.99",
        "--set",
        "find.verify_threshold=none",
    )
    with review_server(stricter, "--near-miss-sample", "0") as (url, _, _):
        summary = json.loads(fetch(url + "api/summary")[1])
    assert summary["labels_elsewhere"] == 1
    assert len(read_labels(stricter / "labels.parquet")) == 1
    selected = json.loads(run_cli("select", "--run-dir", stricter, "--embeddings", run_dir / "embeddings").stdout)
    assert selected["labels"] == {"distinct_not_found": 1}


def test_labels_keep_the_last_word_and_undo_restores_the_one_before(tmp_path):
    path = tmp_path / "labels.parquet"
    pair = (("shard-a.tar", "1"), ("shard-b.tar", "2"))
    book = LabelBook(path)
    book.set(pair, duplicate=True, similarity=0.91, signal="embedding")
    book.set(pair, duplicate=False)
    assert read_labels(path)[pair].duplicate is False
    assert pq.read_table(path).num_rows == 1
    assert book.undo() == pair
    assert read_labels(path)[pair].duplicate is True
    assert book.undo() == pair and book.undo() is None
    assert read_labels(path) == {}

    # a file that lists a pair twice (concatenated by hand, say) keeps the later decision, wherever its row is
    from dedup.io.labels import Label, labels_table

    earlier = labels_table({pair: Label(True, 1_000)})
    later = labels_table({pair: Label(False, 2_000)})
    pq.write_table(pa.concat_tables([later, earlier]), path)
    assert read_labels(path)[pair] == Label(False, 2_000)


@pytest.mark.slow
def test_a_duplicate_label_joins_two_samples_the_detector_kept_apart(review_run, tmp_path):
    run_dir, _ = review_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("groups.parquet", "pairs.parquet", "find.json"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    groups = pq.read_table(copy / "groups.parquet").to_pylist()
    unique = [row for row in groups if row["group_size"] == 1][:2]
    first, second = ((row["shard"], row["key"]) for row in unique)
    LabelBook(copy / "labels.parquet").set((min(first, second), max(first, second)), duplicate=True, similarity=0.5)
    selected = json.loads(run_cli("select", "--run-dir", copy, "--embeddings", run_dir / "embeddings").stdout)
    assert selected["labels"] == {"duplicate_added": 1}
    manifest = {row["key"]: row for row in pq.read_table(copy / "manifest.parquet").to_pylist()}
    joined = [manifest[row["key"]] for row in unique]
    assert joined[0]["group_id"] == joined[1]["group_id"] and joined[0]["group_size"] == 2
    assert sorted(row["status"] for row in joined) == ["dropped", "kept"]
    dropped = next(row for row in joined if row["status"] == "dropped")
    assert dropped["match"] == "person" and "a person labelled it a duplicate of" in dropped["reason"]
    untouched = [row for key, row in manifest.items() if key not in {r["key"] for r in unique}]
    before = {row["key"]: row for row in groups}
    assert all(row["group_id"] == before[row["key"]]["group_id"] for row in untouched)


@pytest.mark.slow
def test_a_person_names_a_pairs_relation_and_select_judges_the_pair_by_that_name(review_run, tmp_path):
    """Key 4 on a `copy` pair names it same_scene (the card says so, labels.parquet keeps it, with no verdict);
    select, with same_scene out of drop_relations, then keeps that pair apart where it did not before."""
    from playwright.sync_api import sync_playwright

    run_dir, _ = review_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("groups.parquet", "pairs.parquet", "find.json"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    without_same_scene = '["exact", "copy", "partial", "similar", "unknown"]'
    select = ("select", "--run-dir", copy, "--embeddings", run_dir / "embeddings",
              "--set", f"select.drop_relations={without_same_scene}")  # fmt: skip
    before = json.loads(run_cli(*select).stdout)
    with review_server(copy) as (url, _, _):
        token = token_of(url)
        headers = {"Content-Type": "application/json", "X-Dedup-Token": token, "Origin": url.rstrip("/")}
        for wrong in (
            {"pair": 0, "relation": "twins"},
            {"pair": 0, "relation": "copy", "label": "distinct"},
            {"pair": 0},
        ):
            status, body = fetch(url + "api/label", json.dumps(wrong).encode(), headers)
            assert status == 400, (wrong, body)
        assert (
            b"same_scene" in fetch(url + "api/label", json.dumps({"pair": 0, "relation": "twins"}).encode(), headers)[1]
        )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1300, "height": 1000}, bypass_csp=True)
            page.goto(url)
            page.wait_for_selector('[data-testid="pair-card"]')
            page.select_option('[data-testid="filter-relation"]', "copy")
            page.wait_for_function(
                "[...document.querySelectorAll('[data-testid=relation]')].every(r => r.dataset.relation === 'copy')"
            )
            page.wait_for_load_state("networkidle")
            page.keyboard.press("4")
            page.wait_for_function(
                "(() => { const r = document.querySelector('.pair.focused [data-testid=relation]');"
                " return r && r.dataset.relation === 'same_scene' && r.dataset.found === 'copy'; })()"
            )
            assert "named by you" in page.locator('.pair.focused [data-testid="relation"]').inner_text()
            browser.close()
    labels = pq.read_table(copy / "labels.parquet").to_pylist()
    assert [(row["relation"], row["duplicate"]) for row in labels] == [("same_scene", None)]
    after = json.loads(run_cli(*select).stdout)
    assert after["labels"] == {"relation_renamed": 1}
    assert after["pairs_kept_apart"] == before["pairs_kept_apart"] + 1
