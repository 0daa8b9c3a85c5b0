"""The web editor in headless Chromium: re-align, reject, rewrite, continue, save, then train on
the saved file.

Needs Debian's /usr/bin/chromium and Playwright for Python (never downloads a browser):
    apt-get install -y chromium && pip install "playwright>=1.50"
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_server
from test_server import CONTEXT, SOURCE, serving

from secondthoughts.cli import main
from secondthoughts.data import read_examples
from secondthoughts.edits import Edit
from secondthoughts.readable import apply_subset

# test_server's fixtures, used here too (the memorized run is built once per session)
memorized_run = test_server.memorized_run
realigner = test_server.realigner

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is absent (pip install 'playwright>=1.50')")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    """A headless Chromium page and the script errors it reports; closed afterwards."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page, errors
        finally:
            browser.close()


def chain_of(edits: list[dict]) -> list[Edit]:
    return [Edit.from_dict(e) for e in edits]


@pytest.mark.slow
def test_correct_a_realignment_in_the_browser_and_train_on_it(realigner, tiny_model_dir, tmp_path):
    expect = sync_api.expect
    corrections = tmp_path / "corrections.jsonl"
    with serving(realigner, corrections) as server, browser_page() as (page, page_errors):
        page.goto(server.url)
        expect(page.locator("#model")).to_contain_text("memorized-run")

        # re-align: the page shows what the API returned
        page.get_by_label("Context").fill(CONTEXT)
        page.get_by_label("Text to re-align").fill(SOURCE)
        with page.expect_response("**/api/realign") as res:
            page.get_by_role("button", name="Re-align").click()
        first = res.value.json()
        edits = first["edits"]
        assert len(edits) >= 2 and edits[0]["old_text"] == " hits", f"the memorized model rewrites 'hits' first: {first['readable']!r}"
        expect(page.locator("#chain > li")).to_have_count(len(edits))
        expect(page.locator("#text")).to_have_value(first["text"])
        expect(page.locator("#diff del").first).to_have_text(re.compile("hits"))

        # reject the second edit: the text updates, the edit is shown as rejected
        page.get_by_label("Accept edit 2").uncheck()
        keep = [True] * len(edits)
        keep[1] = False
        expect(page.locator("#text")).to_have_value(apply_subset(SOURCE, chain_of(edits), keep))
        expect(page.locator("#edit-2")).to_have_class(re.compile("rejected"))

        # rewrite the first edit in place
        page.get_by_role("button", name="Edit 1", exact=True).click()
        page.get_by_label("Edit 1 as a line").fill('replace "hits" with "hugs"')
        page.get_by_role("button", name="Apply").click()
        expect(page.locator("#text")).to_have_value(re.compile("^Tom hugs "))
        expect(page.locator("#edit-1 .badge")).to_have_text("edited by you")

        # a line that does not fit: a clear message in the page, the chain unchanged
        page.get_by_label("Add an edit").fill('replace "cats" with "dogs"')
        page.get_by_role("button", name="Add", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text("'cats' not found in the source")
        expect(page.locator("#chain > li")).to_have_count(len(edits))

        # continue after the corrected edit: the model writes the rest
        with page.expect_response("**/api/continue") as res:
            page.get_by_role("button", name="Continue from edit 1").click()
        cont = res.value.json()
        assert cont["prefix_edits"] == 1 and cont["edits"][0]["new"] == [" hugs"]
        expect(page.locator("#chain > li")).to_have_count(len(cont["edits"]))
        expect(page.locator("#text")).to_have_value(cont["text"])
        expect(page.locator("#edit-1 .badge")).to_have_text("edited by you")
        expect(page.get_by_role("alert")).to_be_hidden()

        page.get_by_role("button", name="Save correction").click()
        expect(page.locator("#saved")).to_contain_text("Saved to")
        page.screenshot(path=str(tmp_path / "editor.png"), full_page=True)  # kept for a look when debugging
        assert not page_errors

    rows = list(read_examples(corrections))
    assert [(r.context, r.source, r.target) for r in rows] == [(CONTEXT, SOURCE, cont["text"])]
    args = ["train", "--data", str(corrections), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"),
            "--max-steps", "1", "--eval-fraction", "0", "--max-length", "128", "--batch-size", "1", "--lora-r", "4", "--no-progress"]
    assert main(args) == 0
    assert (tmp_path / "run" / "model").is_dir()


@pytest.mark.slow
def test_learn_from_my_corrections_in_the_browser(realigner, memorized_run, tmp_path):
    from secondthoughts.learn_job import LearnJob

    expect = sync_api.expect
    job = LearnJob(tmp_path / "learned", ["--max-steps", "2"])
    with serving(realigner, tmp_path / "corrections.jsonl", learn=job) as server, browser_page() as (page, page_errors):
        page.goto(server.url)
        expect(page.locator("#model")).to_contain_text("memorized-run")
        learn = page.get_by_role("button", name="Learn from my corrections")
        learn.click()  # nothing saved yet: said in the page
        expect(page.get_by_role("alert")).to_contain_text("no corrections saved yet")

        page.get_by_label("Context").fill(CONTEXT)
        page.get_by_label("Text to re-align").fill(SOURCE)
        page.get_by_role("button", name="Re-align").click()
        expect(page.locator("#chain > li").first).to_be_visible()
        page.get_by_label("Accept edit 1").uncheck()
        page.get_by_role("button", name="Save correction").click()
        expect(page.locator("#saved")).to_contain_text("Saved to")

        learn.click()
        expect(page.locator("#learn-status")).to_contain_text("Learning into")
        expect(learn).to_be_disabled()
        expect(page.locator("#learn-status")).to_contain_text("Done", timeout=180_000)
        learned = str(tmp_path / "learned-1")
        expect(page.locator("#model")).to_contain_text(learned)
        expect(page.locator("#runs option")).to_have_count(2)
        expect(learn).to_be_enabled()

        # back to the model it started from: the select switches the server's model
        with page.expect_response("**/api/model"):
            page.get_by_label("Model in use").select_option(str(memorized_run))
        expect(page.locator("#model")).to_contain_text("memorized-run")
        assert not page_errors
    assert (tmp_path / "learned-1" / "model").is_dir()
