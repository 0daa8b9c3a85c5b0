// The Second Thoughts editor: re-align a text, then accept / reject / rewrite single edits and
// let the model continue after a corrected one. All chain logic lives on the server (server.py);
// this file only keeps the current chain and draws it. User text is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);

// The chain on screen: what /api/realign, /api/continue and /api/apply return, plus labels for
// the edits a person made ("edited", "added", "kept"), keyed by the edit itself so that they
// survive edits being added or removed around them.
let state = null;

const editKey = (e) => JSON.stringify([e.op, e.start, e.old, e.new]);

async function api(path, body) {
  let res;
  try {
    res = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new Error(`Cannot reach the server (${err.message}). Is "secondthoughts serve" still running?`);
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    // A proxy or a crashed handler: no JSON; the status says enough.
  }
  if (!res.ok) throw new Error((data && data.error) || `The server answered ${res.status} ${res.statusText}.`);
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message ? `Error: ${message}` : "";
  box.hidden = !message;
  if (message) box.scrollIntoView({ block: "nearest" });
}

// Run one request with the page locked, so that clicks cannot race each other.
async function busy(label, work) {
  showError("");
  $("busy").textContent = label;
  document.body.classList.add("busy");
  // only those enabled now: a control disabled for another reason (learning) stays so
  const controls = [...document.querySelectorAll("main button, main input[type=checkbox], main select")].filter((c) => !c.disabled);
  controls.forEach((c) => (c.disabled = true));
  try {
    await work();
  } catch (err) {
    showError(err.message);
  } finally {
    controls.forEach((c) => (c.disabled = false));
    document.body.classList.remove("busy");
    $("busy").textContent = "";
  }
}

// ------------------------------------------------------------------ drawing

function drawDiff(segments) {
  const diff = $("diff");
  diff.replaceChildren();
  for (const s of segments) {
    if (s.kind === "same") {
      diff.append(document.createTextNode(s.text));
      continue;
    }
    const tag = { del: "del", ins: "ins", off: "span" }[s.kind];
    const el = document.createElement(tag);
    if (s.kind === "off") el.className = "off";
    el.title = `edit ${s.edit + 1}${s.kind === "off" ? " (rejected)" : ""}`;
    el.dataset.edit = String(s.edit);
    const sr = document.createElement("span");
    sr.className = "sr-only";
    sr.textContent = { del: " [removed: ", ins: " [written: ", off: " [rejected edit: " }[s.kind];
    const end = document.createElement("span");
    end.className = "sr-only";
    end.textContent = "] ";
    el.append(sr, document.createTextNode(s.text), end);
    diff.append(el);
  }
}

function drawChain() {
  const list = $("chain");
  list.replaceChildren();
  const template = $("edit-item");
  state.edits.forEach((e, i) => {
    const li = template.content.firstElementChild.cloneNode(true);
    const n = i + 1;
    li.id = `edit-${n}`;
    li.querySelector(".num").textContent = `${n}.`;
    li.classList.toggle("rejected", !state.keep[i]);
    const keep = li.querySelector(".keep");
    keep.checked = state.keep[i];
    keep.setAttribute("aria-label", `Accept edit ${n}`);
    keep.addEventListener("change", () => toggle(i, keep.checked));
    const op = li.querySelector(".op");
    op.textContent = e.op;
    op.classList.add(e.op);
    li.querySelector(".line").textContent = e.readable;
    const label = state.labels.get(editKey(e));
    const badge = li.querySelector(".badge");
    badge.hidden = !label;
    badge.textContent = label ? `${label} by you` : "";

    const editor = li.querySelector(".editor");
    const input = li.querySelector(".line-input");
    const editBtn = li.querySelector(".edit-btn");
    input.id = `line-${n}`;
    editor.querySelector("label").htmlFor = input.id;
    editor.querySelector("label").textContent = `Edit ${n} as a line`;
    editBtn.setAttribute("aria-label", `Edit ${n}`);
    editBtn.addEventListener("click", () => {
      editor.hidden = false;
      input.value = e.readable;
      input.focus();
    });
    const close = () => {
      editor.hidden = true;
      editBtn.focus();
    };
    li.querySelector(".cancel-btn").addEventListener("click", close);
    input.addEventListener("keydown", (ev) => ev.key === "Escape" && close());
    editor.addEventListener("submit", (ev) => {
      ev.preventDefault();
      rewrite(i, input.value);
    });
    const cont = li.querySelector(".continue-btn");
    cont.setAttribute("aria-label", `Continue from edit ${n}`);
    cont.title = "Keep the accepted edits up to this one and let the model write the rest";
    cont.addEventListener("click", () => continueFrom(i));
    list.append(li);
  });
  $("no-edits").hidden = state.edits.length > 0;
}

function drawNotes(result) {
  const notes = $("notes");
  notes.replaceChildren();
  const add = (text, cls) => {
    const li = document.createElement("li");
    li.textContent = text;
    if (cls) li.className = cls;
    notes.append(li);
  };
  if (result) {
    if (!result.valid) add(`The model wrote a chain that does not apply (${result.error}); showing the text unchanged.`, "warn");
    if (result.truncated) add("The generation budget cut the chain short; its complete edits are kept.", "warn");
    if (result.generated_target != null && result.disagrees) add(`The model's own target differs: ${result.generated_target}`, "warn");
    const t = result.timings || {};
    add(`${result.edits.length} edits · ${(t.total_s || 0).toFixed(2)} s · ${t.new_tokens || 0} new tokens · mode ${result.mode}`);
  }
}

function draw(view, result) {
  Object.assign(state, { edits: view.edits, keep: view.keep, text: view.text });
  drawDiff(view.segments);
  $("text").value = view.text;
  if (result !== undefined) drawNotes(result);
  drawChain();
  $("result").hidden = false;
  markStale();
}

function markStale() {
  $("stale").hidden = !state || ($("context").value === state.context && $("source").value === state.source);
}

// ------------------------------------------------------------------ actions

function showResult(result, labels) {
  state = { context: result.context, source: result.source, labels };
  $("saved").textContent = "";
  draw(result, result);
}

function realign() {
  const source = $("source").value;
  if (!source.trim()) {
    showError("Enter a text to re-align.");
    $("source").focus();
    return;
  }
  busy("Re-aligning…", async () => {
    showResult(await api("/api/realign", { context: $("context").value, source }), new Map());
  });
}

// Send the chain (with changes) to the server, which checks it and returns the new view.
function applyChain(chain, extra = {}) {
  return api("/api/apply", { source: state.source, chain, keep: state.keep, ...extra });
}

function toggle(i, keep) {
  busy("Updating…", async () => {
    state.keep[i] = keep;
    try {
      draw(await applyChain(state.edits));
    } catch (err) {
      state.keep[i] = !keep;
      drawChain();
      throw err;
    }
  });
}

function rewrite(i, line) {
  busy("Checking the edit…", async () => {
    const chain = state.edits.map((e, j) => (j === i ? { readable: line } : e));
    const view = await applyChain(chain);
    state.labels.set(editKey(view.edits[i]), "edited");
    draw(view);
    document.querySelector(`#edit-${i + 1} .edit-btn`).focus();
  });
}

function addEdit(line) {
  if (!line.trim()) {
    showError('Write the edit as a line, e.g. replace "hits" with "talks to".');
    return;
  }
  busy("Adding the edit…", async () => {
    const before = new Set(state.edits.map(editKey));
    const view = await applyChain(state.edits, { add: line });
    view.edits.filter((e) => !before.has(editKey(e))).forEach((e) => state.labels.set(editKey(e), "added"));
    $("add-line").value = "";
    draw(view);
  });
}

function continueFrom(i) {
  busy("The model continues…", async () => {
    const prefix = state.edits.filter((_, j) => j <= i && state.keep[j]);
    const result = await api("/api/continue", { context: state.context, source: state.source, prefix });
    // The prefix edits are now the person's: keep their labels, mark the others as kept.
    const labels = new Map(prefix.map((e) => [editKey(e), state.labels.get(editKey(e)) || "kept"]));
    showResult(result, labels);
  });
}

function save() {
  busy("Saving…", async () => {
    const res = await api("/api/save", { context: state.context, source: state.source, target: state.text });
    $("saved").textContent = `Saved to ${res.path} at ${new Date().toLocaleTimeString()}.`;
  });
}

// ------------------------------------------------------------------ learning

const LEARN_TEXT = {
  idle: () => "",
  running: (st) => `Learning into ${st.out}… (the current model keeps answering meanwhile)`,
  loading: (st) => `Loading ${st.out}…`,
  done: (st) => `Done in ${st.seconds} s: ${st.message}.`,
  failed: (st) => `Learning failed: ${st.message}`,
};

function showModel(h) {
  $("model").textContent = `model ${h.model} · mode ${h.mode} · corrections → ${h.corrections}`;
  const select = $("runs");
  select.replaceChildren(
    ...h.runs.map((r) => {
      const o = document.createElement("option");
      o.value = o.textContent = r;
      o.selected = r === h.model;
      return o;
    }),
  );
}

function showLearn(st) {
  $("learn-status").textContent = (LEARN_TEXT[st.state] || (() => st.state))(st);
  const working = st.state === "running" || st.state === "loading";
  $("learn").disabled = working;
  $("runs").disabled = working;
  if (working) setTimeout(pollLearn, 1000);
  else if (st.state === "done" || st.state === "failed") api("/api/health").then(showModel, (err) => showError(err.message));
}

function pollLearn() {
  api("/api/learn").then(showLearn, (err) => showError(err.message));
}

function learn() {
  showError("");
  api("/api/learn", {}).then(showLearn, (err) => showError(err.message));
}

function switchModel() {
  busy("Switching model…", async () => {
    await api("/api/model", { run: $("runs").value });
    showModel(await api("/api/health"));
  });
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("input").addEventListener("submit", (ev) => {
    ev.preventDefault();
    realign();
  });
  for (const id of ["context", "source"]) {
    $(id).addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        realign();
      }
    });
    $(id).addEventListener("input", markStale);
  }
  $("add").addEventListener("submit", (ev) => {
    ev.preventDefault();
    addEdit($("add-line").value);
  });
  $("save").addEventListener("click", save);
  $("learn").addEventListener("click", learn);
  $("runs").addEventListener("change", switchModel);
  api("/api/health")
    .then((h) => {
      showModel(h);
      $("learning").hidden = !h.learn;
      if (h.learn) pollLearn();
    })
    .catch((err) => {
      $("model").textContent = "not connected";
      showError(err.message);
    });
});
